"""SpotServe pauses only the replicas a reconfiguration actually touches.

A replica whose GPUs and shards the migration plan leaves alone serves on through the switch;
new replicas serve once their weights arrive; replicas that lose a GPU follow stateful recovery.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from spot_helpers import instance, tiny_memory, tiny_profile

from ember.spot.arrivals import Arrival
from ember.spot.config import Device, ParallelConfig, Position
from ember.spot.controller import SpotController
from ember.spot.migration import MigrationPlanner
from ember.spot.optimizer import OptimizerConfig, ParallelOptimizer
from ember.spot.simulator import SimulationConfig, Simulator
from ember.spot.traces import AvailabilityEvent, AvailabilityTrace

OUT = 10  # tokens per request
GRACE = 5.0
# One GPU per instance and tp1 only; batch 1 makes pp1 the fastest and widest shape, so the
# optimizer keeps (tp, pp) = (1, 1) and dp = number of GPUs whatever the trace does.
PROFILE = tiny_profile(max_tp=1, prefill_ms={(1, 1): 40.0}, decode_ms={(1, 1): 20.0})
INSTANCE = instance(gpus_per_instance=1, network_gbps=0.005, intra_gbps=0.005, storage_gbps=0.005)
# one request: prefill 4 x 40 ms + 10 steps x 4 x 20 ms + embeddings 2 x 0.5 ms
BASE_S = 0.16 + 0.8 + 0.001


def simulate(policy: str, events: list[AvailabilityEvent], arrivals: list[Arrival], end_s: float):
    memory = tiny_memory()
    optimizer = ParallelOptimizer(
        PROFILE, memory, INSTANCE, OptimizerConfig(output_len=OUT, input_len=8, max_batch_size=1)
    )
    trace = AvailabilityTrace(events=tuple(events), end_s=end_s)
    controller = SpotController(
        policy=policy,
        optimizer=optimizer,
        planner=MigrationPlanner(memory, INSTANCE),
        instance=INSTANCE,
        pool_instances=max(1, trace.max_instances),
    )
    sim = Simulator(
        trace=trace,
        arrivals=arrivals,
        controller=controller,
        profile=PROFILE,
        config=SimulationConfig(grace_period_s=GRACE, output_len=OUT, max_batch_size=1, required_rate=0.1),
    )
    starts: list[tuple[float, frozenset[str]]] = []
    start = sim._start

    def spy(rep, reqs, committed, *, with_prefill):
        starts.append((sim.now, rep.instance_ids))
        start(rep, reqs, committed, with_prefill=with_prefill)

    sim._start = spy
    return sim.run(), starts


def requests(*times: np.ndarray) -> list[Arrival]:
    return [Arrival(request_id=i, time_s=float(t), prompt_len=8) for i, t in enumerate(np.concatenate(times))]


def every(gap_s: float, end_s: float) -> list[Arrival]:
    return requests(np.arange(0.05, end_s, gap_s))


def add(t, *ids):
    return AvailabilityEvent(time_s=t, kind="add", instance_ids=ids)


def remove(t, *ids):
    return AvailabilityEvent(time_s=t, kind="remove", instance_ids=ids)


def test_added_instance_leaves_old_replicas_serving():
    # a, b serve; c arrives at 10 s: dp 2 -> 3, same shape. a and b must not pause; c serves once
    # its weights have arrived from a or b. Arrivals speed up at 14 s so that c gets work; no
    # request ever waits for a free replica.
    arrivals = requests(np.arange(0.05, 14, 0.5), np.arange(14.05, 20, 0.35))
    rec, starts = simulate("spotserve", [add(0, "a", "b"), add(10, "c")], arrivals, 20)
    assert len(rec.reconfigurations) == 2
    ((t, config, mode, est, kept),) = [r for r in rec.reconfigurations if r[0] == 10]
    assert config.startswith("dp3.tp1.pp1") and kept == 2 and est > 1.0  # slow network: a visible window
    assert any(10 <= s < 10 + est and ids <= {"a", "b"} for s, ids in starts)  # old replicas admit in it
    assert min(s for s, ids in starts if ids == {"c"}) >= 10 + est
    assert max(rec.latency_s) == pytest.approx(BASE_S)  # no request waited


def test_preemption_pauses_only_the_replica_that_loses_its_gpu():
    # c is preempted at 20 s (notice at 15 s): dp 3 -> 2, same shape. Only c's replica stops;
    # a and b keep every request at the no-event latency. (The old model paused all three.)
    rec, starts = simulate("spotserve", [add(0, "a", "b", "c"), remove(20, "c")], every(0.5, 30), 30)
    assert [(r[1][:3], r[4]) for r in rec.reconfigurations] == [("dp3", 0), ("dp2", 2)]
    assert any(19 <= s <= 21 and ids <= {"a", "b"} for s, ids in starts)
    assert max(rec.latency_s) == pytest.approx(BASE_S)
    assert rec.restarted_tokens == 0


def test_replacement_moves_the_dying_replica_and_keeps_the_others_serving():
    # c's notice (15 s) starts a switch that drains c until 19.5 s; d's addition (16 s) and b's
    # notice (17 s) wait for it and are decided together at 19.5 s: b's replica moves onto d with
    # its batch's KV, while a's replica serves on untouched.
    events = [add(0, "a", "b", "c"), add(16, "d"), remove(20, "c"), remove(22, "b")]
    rec, starts = simulate("spotserve", events, every(0.5, 30), 30)
    ((t, config, mode, est, kept),) = [r for r in rec.reconfigurations if r[0] == 19.5]
    assert config.startswith("dp2.tp1.pp1") and mode == "migrate_kv" and kept == 1
    assert rec.resumed_tokens > 0 and rec.restarted_tokens == 0
    ready = 22.0  # stop_by + est: the replacement serves once b's state has arrived, at its deadline
    assert all(s >= ready - 1e-9 for s, ids in starts if ids == {"d"})
    assert any(22 - est <= s < ready and ids == {"a"} for s, ids in starts)


def test_plan_marks_only_untouched_replicas_intact():
    memory = tiny_memory()
    pl = MigrationPlanner(memory, INSTANCE)
    cfg = lambda dp, tp=1: ParallelConfig(dp=dp, tp=tp, pp=1, batch_size=1)  # noqa: E731
    a, b, c = Device("a", 0), Device("b", 0), Device("c", 0)
    old = {a: Position(0, 0, 0), b: Position(1, 0, 0)}
    grow = pl.plan(
        old_config=cfg(2),
        old_placement=old,
        new_config=cfg(3),
        new_placement={**old, c: Position(2, 0, 0)},
        kv_tokens={},
        replica_map={},
    )
    assert grow.intact_replicas == {0: 0, 1: 1}
    swap = pl.plan(
        old_config=cfg(2),
        old_placement=old,
        new_config=cfg(2),
        new_placement={a: Position(1, 0, 0), b: Position(0, 0, 0)},
        kv_tokens={0: 5, 1: 5},
        replica_map={0: 0, 1: 1},
    )
    assert swap.intact_replicas == {}  # each GPU must receive the other's KV
    dying = pl.plan(
        old_config=cfg(2),
        old_placement=old,
        new_config=cfg(2),
        new_placement={a: Position(0, 0, 0), c: Position(1, 0, 0)},
        kv_tokens={},
        replica_map={},
        dying_instances=frozenset({"b"}),
    )
    assert dying.intact_replicas == {0: 0}
    reshaped = pl.plan(
        old_config=cfg(2),
        old_placement=old,
        new_config=cfg(1, tp=2),
        new_placement={a: Position(0, 0, 0), b: Position(0, 1, 0)},
        kv_tokens={},
        replica_map={},
    )
    assert reshaped.intact_replicas == {}


@st.composite
def small_traces(draw):
    """2-4 instances at 0; then up to 4 adds/removes, every instance living past its notice.

    NOTE: events are more than a grace period apart, so no decision sees an addition and a
    preemption at once. When one does (both deferred behind a running switch), SpotServe moves the
    dying replica onto the new GPUs and stops its batch one migration before the deadline, where
    reroute drains until 0.5 s before it: for a moment SpotServe is then behind by less than one
    migration (`test_replacement_...` below; docs/spot.md)."""
    ids = [f"i{k}" for k in range(draw(st.integers(2, 4)))]
    events, alive, born, next_id, t = [add(0, *ids)], list(ids), {i: 0.0 for i in ids}, len(ids), 0.0
    for _ in range(draw(st.integers(1, 4))):
        t += draw(st.sampled_from([GRACE + 1, 7.5, 12.0]))
        gone = [i for i in alive if t - born[i] > GRACE + 1]
        if draw(st.booleans()) and len(alive) > 1 and gone:
            victim = draw(st.sampled_from(gone))
            alive.remove(victim)
            events.append(remove(t, victim))
        else:
            new = f"i{next_id}"
            next_id += 1
            alive.append(new)
            born[new] = t
            events.append(add(t, new))
    return events, t + 10


def serving_floor(events: list[AvailabilityEvent], end_s: float) -> int:
    """Fewest instances that can take a request at any moment: added at 0 or at least 2 s ago
    (weights arrive in ~1.5 s) and not under a preemption notice."""
    added, notice = {}, {}
    for ev in events:
        for iid in ev.instance_ids:
            if ev.kind == "add":
                added[iid] = 0.0 if ev.time_s == 0 else ev.time_s + 2.0
            else:
                notice[iid] = ev.time_s - GRACE
    return min(sum(1 for i, a in added.items() if a <= t < notice.get(i, np.inf)) for t in np.arange(0, end_s, 0.05))


@settings(max_examples=20, deadline=None)
@given(trace=small_traces(), gap=st.sampled_from([0.3, 0.45, 0.7, 1.0]))
def test_spotserve_never_behind_reroute_when_shape_is_kept(trace, gap):
    # The k-th completion under spotserve comes no later than under reroute, for every k, when
    # the GPUs left can take every request on arrival. Under overload both saturate and the
    # completion times follow the phase of each replica's batches: then within one batch.
    events, end = trace
    arrivals = every(gap, end)
    spot, _ = simulate("spotserve", events, arrivals, end)
    reroute, _ = simulate("reroute", events, arrivals, end)
    assert all(".tp1.pp1." in c[1] for c in spot.reconfigurations if c[1] != "none")
    done_spot = np.sort(np.add(spot.arrival_s, spot.latency_s))
    done_reroute = np.sort(np.add(reroute.arrival_s, reroute.latency_s))
    assert len(done_spot) == len(done_reroute) == len(arrivals)
    fits = int(np.ceil(BASE_S / gap)) <= serving_floor(events, end)
    assert np.all(done_spot <= done_reroute + (0.0 if fits else BASE_S) + 1e-9)
    if fits:
        assert max(spot.latency_s) == pytest.approx(BASE_S)
