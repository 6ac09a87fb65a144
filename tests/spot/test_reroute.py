"""The rerouting baseline: one configuration for the whole host pool and the whole run.

As the SpotServe artifact's `baseline-triton` (`Scheduler.inspect_init_strategy`, scheduler.py:631-637),
(tp, pp, batch, M1, M2) are solved once for every GPU of the pool and only dp follows the GPUs alive.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from spot_helpers import DATA, instance, tiny_memory, tiny_profile

from ember.errors import InvalidInputError
from ember.spot.arrivals import load_arrivals
from ember.spot.controller import SpotController
from ember.spot.experiment import ExperimentConfig, run_experiment
from ember.spot.hardware import InstanceSpec, ModelMemory
from ember.spot.migration import MigrationPlanner
from ember.spot.optimizer import OptimizerConfig, ParallelOptimizer
from ember.spot.profile import load_profile
from ember.spot.traces import AvailabilityEvent, AvailabilityTrace, load_trace


def _decisions(monkeypatch, trace, profile, min_world_size, rate, **kw):
    """Run reroute on `trace`; every configuration its controller hands the simulator, in order."""
    seen = []
    decide = SpotController.decide

    def spy(self, view):
        rc = decide(self, view)
        if rc is not None:
            seen.append((view.now_s, len(view.instances), rc.new_config))
        return rc

    monkeypatch.setattr(SpotController, "decide", spy)
    arrivals = load_arrivals(DATA / "query_tpt0.35_cv6_head.txt")
    cfg = ExperimentConfig(policies=("reroute",), min_world_size=min_world_size, required_rate=rate, **kw)
    (res,) = run_experiment(trace=trace, arrivals=arrivals, profile=profile, config=cfg)
    return seen, res


def _optimizer(profile, min_world_size):
    mem = ModelMemory(num_layers=profile.num_layers, hidden_size=profile.hidden_size)
    return ParallelOptimizer(
        profile, mem, InstanceSpec(), OptimizerConfig(input_len=512, max_batch_size=4, min_world_size=min_world_size)
    )


@pytest.mark.parametrize(("model", "min_ws", "rate"), [("6.7B", 4, 2.0), ("h6144", 12, 0.4)])
def test_reroute_keeps_one_configuration_for_the_pool(monkeypatch, model, min_ws, rate):
    # trace A_S starts with 7 of its 10 instances: the pool (40 GPUs) and the first cluster
    # (28 GPUs) give different shapes, so a choice from the first cluster would show here.
    trace = load_trace(DATA / "trace_0304_real.txt")
    profile = load_profile(DATA / f"megatron_{model}_profile.json")
    opt = _optimizer(profile, min_ws)
    pool = opt.choose(trace.max_instances * 4, rate).config
    assert pool.shape != opt.choose(len(trace.alive_at(0.0)) * 4, rate).config.shape
    seen, res = _decisions(monkeypatch, trace, profile, min_ws, rate)
    configs = [c for _, _, c in seen if c is not None]
    assert len(configs) >= 3 and len({c.dp for c in configs}) >= 2  # dp did change
    for _, alive, c in seen:
        if c is not None:
            assert replace(c, dp=pool.dp) == pool  # tp, pp, batch, M1, M2 never change
            assert c.num_gpus <= alive * 4
    strings = [cfg for _, cfg, *_ in res.record.reconfigurations if cfg != "none"]
    assert all(s.split(".", 1)[1] == pool.short().split(".", 1)[1] for s in strings)


def test_reroute_waits_for_the_pool_shape_rather_than_fitting_the_first_cluster(monkeypatch):
    # 3 instances (12 GPUs) at first, 10 from 60 s. The 20B pool shape tp8 x pp2 needs 16 GPUs,
    # so nothing serves until 60 s, as in the artifact (dp = 12 // 16 = 0); a choice from the
    # first cluster would have taken tp4 x pp3 and kept it.
    ids = [f"n{k}" for k in range(10)]
    trace = AvailabilityTrace(
        events=(
            AvailabilityEvent(time_s=0.0, kind="add", instance_ids=tuple(ids[:3])),
            AvailabilityEvent(time_s=60.0, kind="add", instance_ids=tuple(ids[3:])),
        ),
        end_s=600.0,
    )
    profile = load_profile(DATA / "megatron_h6144_profile.json")
    opt = _optimizer(profile, 12)
    pool = opt.choose(10 * 4, 0.4).config
    assert pool.shape == (8, 2) and opt.choose(3 * 4, 0.4).config.shape == (4, 3)
    seen, res = _decisions(monkeypatch, trace, profile, 12, 0.4)
    assert [(t, c) for t, _, c in seen] == [(60.0, pool)]
    assert res.summary.num_completed > 0


def test_host_pool_overrides_the_trace_peak(monkeypatch):
    trace = load_trace(DATA / "trace_0304_real.txt")
    profile = load_profile(DATA / "megatron_h6144_profile.json")
    small = _optimizer(profile, 12).choose(7 * 4, 0.4).config
    seen, _ = _decisions(monkeypatch, trace, profile, 12, 0.4, host_pool=7)
    assert {replace(c, dp=small.dp) for _, _, c in seen if c is not None} == {small}


def test_pool_too_small_for_the_model_never_serves(monkeypatch):
    trace = load_trace(DATA / "trace_0304_real.txt")
    profile = load_profile(DATA / "megatron_h6144_profile.json")
    seen, res = _decisions(monkeypatch, trace, profile, 12, 0.4, host_pool=2)
    assert seen == [] and res.summary.num_completed == 0


def test_reroute_needs_a_pool():
    mem, inst = tiny_memory(), instance()
    opt = ParallelOptimizer(tiny_profile(), mem, inst, OptimizerConfig(input_len=8))
    with pytest.raises(ValueError, match="pool_instances"):
        SpotController(policy="reroute", optimizer=opt, planner=MigrationPlanner(mem, inst), instance=inst)
    with pytest.raises(InvalidInputError, match="host_pool"):
        ExperimentConfig(host_pool=0)
