"""`ember bench spot-live`'s analysis, without Ray: the workload, the calibration from live step
logs, the simulator's prediction of a run and its core-sharing model, and the CLI's errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from spot_helpers import DATA, instance, tiny_memory, tiny_profile

from ember.kvcache.cost_model import LatencyModel
from ember.spot.arrivals import Arrival
from ember.spot.controller import SpotController
from ember.spot.live.bench import SpotLiveBenchConfig, simulate_run, workload
from ember.spot.live.calibration import calibration, effective_cores
from ember.spot.migration import MigrationPlanner
from ember.spot.optimizer import OptimizerConfig, ParallelOptimizer
from ember.spot.simulator import SimulationConfig, Simulator
from ember.spot.traces import AvailabilityEvent, AvailabilityTrace


def config(**kw) -> SpotLiveBenchConfig:
    return SpotLiveBenchConfig(trace=str(DATA / "trace_0506_real.txt"), **kw)


def test_workload_is_seeded_poisson_half_greedy():
    cfg = config(rate=2.0, seed=3)
    a, b = workload(cfg, 200.0), workload(cfg, 200.0)
    assert [(r.request_id, r.prompt, r.at_s) for r in a] == [(r.request_id, r.prompt, r.at_s) for r in b]
    assert 340 < len(a) < 460  # Poisson(400)
    gaps = np.diff([r.at_s for r in a])
    assert gaps.min() > 0 and abs(gaps.std() / gaps.mean() - 1) < 0.15  # exponential: CV 1
    assert all(r.params.is_greedy == (k % 2 == 0) for k, r in enumerate(a))
    assert len({r.params.seed for r in a if not r.params.is_greedy}) == len(a) // 2
    assert [r.at_s for r in workload(config(rate=2.0, seed=4), 200.0)] != [r.at_s for r in a]


def test_calibration_recovers_the_step_cost_and_overheads():
    truth = LatencyModel(fixed_s=0.004, per_token_s=0.0007, per_pair_s=2e-7)
    rng = np.random.default_rng(0)
    steps = []
    for _ in range(300):
        items = [(int(rng.integers(1, 64)), int(rng.integers(0, 200))) for _ in range(int(rng.integers(1, 8)))]
        cpu = truth.batch_time(items)
        steps.append([items, cpu * 2.5, cpu])  # waited for a core as long again and a half
    run = {
        "step_samples": steps,
        "decisions": [
            {"ready_s": 40.0, "started": ["a", "b"]},
            {"ready_s": 3.0, "started": []},
            {"ready_s": 12.0, "started": ["c"]},
            {"ready_s": 16.0, "started": ["d"]},
        ],
        "router": {"pauses_s": [0.02, 0.05, 0.03]},
    }
    c = calibration(run)
    assert c["latency"]["fixed_s"] == pytest.approx(truth.fixed_s, rel=1e-6)
    assert c["latency"]["per_token_s"] == pytest.approx(truth.per_token_s, rel=1e-6)
    assert c["latency"]["per_pair_s"] == pytest.approx(truth.per_pair_s, rel=1e-6)
    assert c["latency_wall"]["per_token_s"] == pytest.approx(2.5 * truth.per_token_s, rel=1e-6)
    assert c["restart_overhead_s"] == 14.0  # the median of the later starts, not the first fleet's
    assert c["switch_overhead_s"] == 0.03 and c["num_steps"] == 300
    # nothing to fit: the simulator keeps the model the controller uses
    assert calibration(run | {"step_samples": steps[:3]})["latency"] is None


def test_effective_cores_from_overlapping_steps():
    """Four replicas stepping at once, each step twice its CPU time: two cores between them;
    one replica alone, however slow, says nothing about sharing."""
    steps = [[[(1, 0)], 0.02, 0.01, 100.0 + 0.02 * t + 0.001 * r] for r in range(4) for t in range(50)]
    assert effective_cores(steps) == pytest.approx(2.0)
    three = [[[(1, 0)], 0.03, 0.01, 5.0 + 0.03 * t + 0.002 * r] for r in range(3) for t in range(50)]
    assert effective_cores(three) == pytest.approx(1.0)
    import os

    alone = [[[(1, 0)], 0.05, 0.01, 7.0 + 0.05 * t] for t in range(50)]
    assert effective_cores(alone) == len(os.sched_getaffinity(0))


def test_simulated_run_follows_the_live_controller():
    """The prediction: every request served, and spotserve's configurations as the trace shrinks
    (B_S's first 360 s: 10 instances, 2 gone at 120 s, 1 at 240 s)."""
    cfg = config(rate=0.5, max_tokens=32)
    requests = workload(cfg, cfg.window().end_s)
    calib = {
        "latency": {"fixed_s": 0.003, "per_token_s": 0.0006, "per_pair_s": 1e-7, "source": "test"},
        "cores": 2,
        "restart_overhead_s": 20.0,
        "switch_overhead_s": 0.05,
    }
    out = {
        p: simulate_run(config(rate=0.5, max_tokens=32, policies=(p,)), p, requests, 16, calib)
        for p in ("spotserve", "reroute")
    }
    for res in out.values():
        assert res["done"] == len(requests) and res["lost"] == 0
        assert res["P50 s"] > 32 * 0.0006  # at least the decode steps
    assert out["spotserve"]["configs"] == ["dp10.tp1.pp1.b1.m1/1", "dp8.tp1.pp1.b1.m1/1", "dp7.tp1.pp1.b1.m1/1"]


def _one_replica_each(n: int, shared_cores):
    trace = AvailabilityTrace(
        events=(AvailabilityEvent(time_s=0.0, kind="add", instance_ids=tuple(f"n{k}" for k in range(n))),),
        end_s=100.0,
    )
    # tp 1 only: four replicas of one device each
    profile = tiny_profile(max_tp=1, prefill_ms={(1, 1): 10.0, (1, 2): 18.0}, decode_ms={(1, 1): 1.0, (1, 2): 1.2})
    optimizer = ParallelOptimizer(
        profile,
        tiny_memory(),
        instance(gpus_per_instance=1),
        OptimizerConfig(output_len=16, input_len=8, max_batch_size=1),
    )
    controller = SpotController(
        policy="spotserve", optimizer=optimizer, planner=MigrationPlanner(tiny_memory(), instance(gpus_per_instance=1)),
        instance=instance(gpus_per_instance=1),
    )  # fmt: skip
    arrivals = [Arrival(request_id=k, time_s=1.0, prompt_len=8) for k in range(n)]
    cfg = SimulationConfig(output_len=16, max_batch_size=1, required_rate=float(n), shared_cores=shared_cores)
    return sorted(
        Simulator(trace=trace, arrivals=arrivals, controller=controller, profile=profile, config=cfg).run().latency_s
    )


def test_replicas_sharing_cores_run_slower_by_how_many_run():
    alone = _one_replica_each(4, None)
    assert len(set(alone)) == 1  # four replicas, one request each, all at once
    assert _one_replica_each(4, 4.0) == alone  # a core each: as fast
    shared = _one_replica_each(4, 1.0)
    assert shared == pytest.approx([alone[0] * k for k in (1, 2, 3, 4)])
    with pytest.raises(ValueError, match="shared_cores"):
        SimulationConfig(shared_cores=0.0)


@pytest.mark.parametrize(
    "args,match",
    [
        (["--policies", "spotserve,fastest"], "policies must be some of"),
        (["--rate", "0"], "rate must be > 0"),
        (["--trace", "A_S", "--trace-dir", "/nonexistent"], "trace directory not found"),
        (["--trace", "/nonexistent.txt"], "not found"),
    ],
)
def test_cli_refuses_bad_input_before_starting_anything(args, match):
    done = subprocess.run(
        [sys.executable, "-m", "ember", "bench", "spot-live", "--no-isolate", *args], capture_output=True, text=True
    )
    assert done.returncode != 0 and match in done.stderr and "Traceback" not in done.stderr, done.stderr
