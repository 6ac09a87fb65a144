"""Trace replay against the real SpotServe segments, node losses, and the merged source."""

from __future__ import annotations

import pytest

from ember.spot.notices import (
    PAPER_SEGMENTS,
    HeldReplay,
    MergedSource,
    NodeLoss,
    NoticeSource,
    PreemptionNotice,
    RayNodeWatcher,
    TraceReplayConfig,
    TraceReplayer,
    paper_segment,
)
from ember.spot.traces import load_trace, window_trace

LIVE = tuple(f"live-{k}" for k in range(12))


def expected(trace, *, speedup: float, grace: float, t0: float, start: float = 0.0):
    """What `ember.spot.traces` says happens after `start`, compressed: (kind, at, deadline)."""
    out = [("arrive", t0, None)] * len(trace.alive_at(start))
    added = {}

    def at(t: float) -> float:
        return t0 + (t - start) / speedup

    for ev in trace.events:
        for iid in ev.instance_ids:
            if ev.kind == "add":
                added[iid] = ev.time_s
            if ev.time_s <= start:
                continue
            if ev.kind == "add":
                out.append(("arrive", at(ev.time_s), None))
            elif ev.kind == "remove":
                out.append(("preempt", at(max(ev.time_s - grace, start, added[iid])), at(ev.time_s)))
    return sorted(out, key=lambda x: (x[1], x[0], x[2] or 0))


def observed(notices: list[PreemptionNotice]):
    return sorted(((n.kind, n.received_at_s, n.deadline_s) for n in notices), key=lambda x: (x[1], x[0], x[2] or 0))


def check_slots(notices: list[PreemptionNotice]) -> None:
    """A live id arrives only when free, is preempted only while up, and is reused only after its deadline."""
    up: dict[str, bool] = {}
    gone_at: dict[str, float] = {}
    for n in notices:
        if n.kind == "arrive":
            assert not up.get(n.instance_id) and n.received_at_s >= gone_at.get(n.instance_id, n.received_at_s)
            up[n.instance_id] = True
        else:
            assert up[n.instance_id]
            up[n.instance_id] = False
            gone_at[n.instance_id] = n.deadline_s


@pytest.mark.parametrize("name,speedup", [("trace_0304_real.txt", 60.0), ("trace_0506_real.txt", 120.0)])
def test_replay_matches_the_segment_compressed(data_dir, name, speedup):
    trace = load_trace(data_dir / name)
    cfg = TraceReplayConfig(speedup=speedup, grace_period_s=30.0)
    rep = TraceReplayer(trace, config=cfg, instance_ids=LIVE[: trace.max_instances], start_at_s=1000.0)
    got = list(rep.schedule)
    assert observed(got) == expected(trace, speedup=speedup, grace=30.0, t0=1000.0)
    n_removed = sum(len(e.instance_ids) for e in trace.events if e.kind == "remove")
    assert sum(n.kind == "preempt" for n in got) == n_removed
    assert all(n.remaining_s == pytest.approx(30.0 / speedup) for n in got if n.kind == "preempt")
    assert [n.received_at_s for n in got] == sorted(n.received_at_s for n in got)
    check_slots(got)
    assert len(rep.initial_instances) == len(trace.alive_at(0.0)) and rep.mapping["node-0"] == "live-0"


def test_a_s_by_hand(data_dir):
    """A_S: 7 up, +1 at 240 s, +2 at 360, node-8 gone at 600, +1 at 900, node-3 and node-10 gone at 1200."""
    rep = TraceReplayer(
        load_trace(data_dir / "trace_0304_real.txt"),
        config=TraceReplayConfig(speedup=60.0, grace_period_s=30.0),
        instance_ids=LIVE[:10],
        start_at_s=0.0,
    )
    pre = [(n.instance_id, n.received_at_s, n.deadline_s) for n in rep.schedule if n.kind == "preempt"]
    assert pre == [("live-8", 9.5, 10.0), ("live-3", 19.5, 20.0), ("live-8", 19.5, 20.0)]  # node-10 reused live-8
    assert rep.mapping["node-10"] == "live-8"
    with pytest.raises(ValueError, match="instance_ids"):
        TraceReplayer(rep.trace, config=rep.config, instance_ids=LIVE[:9], start_at_s=0.0)


def test_replay_polls_each_notice_once(data_dir):
    rep = TraceReplayer(
        load_trace(data_dir / "trace_0304_real.txt"),
        config=TraceReplayConfig(speedup=60.0),
        instance_ids=LIVE,
        start_at_s=100.0,
    )
    assert rep.poll(99.0) == []
    polled = [n for t in (100.0, 100.0, 104.0, 109.5, 109.5, 115.0, 50.0, 200.0, 300.0) for n in rep.poll(t)]
    assert polled == list(rep.schedule) and rep.done
    assert rep.poll(400.0) == []  # nothing left to report, however late the poll


def test_replay_from_the_middle_of_a_segment(data_dir):
    trace = load_trace(data_dir / "trace_0304_real.txt")
    for start in (300.0, 590.0, 1200.0):
        cfg = TraceReplayConfig(speedup=10.0, grace_period_s=30.0, start_s=start)
        rep = TraceReplayer(trace, config=cfg, instance_ids=LIVE, start_at_s=5.0)
        assert observed(list(rep.schedule)) == expected(trace, speedup=10.0, grace=30.0, t0=5.0, start=start)
        check_slots(list(rep.schedule))
    # at 590 s node-8's notice (due at 570) is already late: it comes at the start, deadline 1 s later
    rep = TraceReplayer(trace, config=TraceReplayConfig(speedup=10.0, start_s=590.0), instance_ids=LIVE, start_at_s=5.0)
    first = next(n for n in rep.schedule if n.kind == "preempt")
    assert (first.received_at_s, first.deadline_s) == (5.0, 6.0)
    # an end cuts the window; no arrive notices for the initial fleet when told so
    cfg = TraceReplayConfig(speedup=10.0, end_s=700.0, announce_initial=False)
    rep = TraceReplayer(trace, config=cfg, instance_ids=LIVE, start_at_s=0.0)
    assert [(n.kind, n.received_at_s) for n in rep.schedule] == [
        ("arrive", 24.0),
        ("arrive", 36.0),
        ("arrive", 36.0),
        ("preempt", 57.0),
    ]
    with pytest.raises(ValueError, match="end_s"):
        TraceReplayConfig(start_s=10.0, end_s=5.0)
    with pytest.raises(ValueError, match="speedup"):
        TraceReplayConfig(speedup=0.0)


def test_paper_segments_from_shared_data(shared_spotserve, data_dir):
    seg_dir = shared_spotserve / "trace" / "trace_seg"
    for name in ("A_S", "B_S"):
        shared = paper_segment(name, seg_dir)
        assert shared.events == load_trace(data_dir / PAPER_SEGMENTS[name]).events
        rep = TraceReplayer(shared, config=TraceReplayConfig(speedup=3600 / 60), instance_ids=LIVE, start_at_s=0.0)
        assert observed(list(rep.schedule)) == expected(shared, speedup=60.0, grace=30.0, t0=0.0)
    # the full 11 h g4dn trace, one trace hour in 10 s, from its third hour; AWS's 2-minute notice
    full = load_trace(shared_spotserve / "trace" / "trace_full" / "g4dn.csv")
    ids = tuple(f"g{k}" for k in range(full.max_instances))
    cfg = TraceReplayConfig(speedup=360.0, grace_period_s=120.0, start_s=7200.0)
    rep = TraceReplayer(full, config=cfg, instance_ids=ids, start_at_s=0.0)
    assert observed(list(rep.schedule)) == expected(full, speedup=360.0, grace=120.0, t0=0.0, start=7200.0)
    check_slots(list(rep.schedule))
    with pytest.raises(ValueError, match="name"):
        paper_segment("C_S", seg_dir)


def test_node_loss_reports_each_death_once():
    loss = NodeLoss()
    assert loss.poll(1.0) == []
    assert loss.report("live-3") and loss.report("live-1", at_s=0.5) and not loss.report("live-3")
    got = loss.poll(2.0)
    assert [(n.instance_id, n.kind, n.deadline_s, n.received_at_s) for n in got] == [
        ("live-1", "terminated", None, 0.5),
        ("live-3", "terminated", None, 2.0),
    ]
    assert loss.poll(3.0) == [] and not loss.report("live-1")


class _Fixed(NoticeSource):
    def __init__(self, notices):
        self.notices = list(notices)

    def poll(self, now_s):
        due = [n for n in self.notices if n.received_at_s <= now_s]
        self.notices = [n for n in self.notices if n.received_at_s > now_s]
        return due


def test_merged_source_orders_by_time_and_closes_all(data_dir):
    rep = TraceReplayer(
        load_trace(data_dir / "trace_0506_real.txt"),
        config=TraceReplayConfig(speedup=60.0, announce_initial=False),
        instance_ids=LIVE,
        start_at_s=0.0,
    )
    loss = NodeLoss()
    other = _Fixed([PreemptionNotice(instance_id="x", kind="preempt", deadline_s=3.0, source="f", received_at_s=1.0)])
    merged = MergedSource([rep, loss, other])
    loss.report("live-5", at_s=0.1)
    got = merged.poll(5.0)  # trace: notices at 1.5 (two) and 3.5; loss at 0.1; other at 1.0
    assert [(n.source, n.received_at_s) for n in got] == [
        ("node-loss", 0.1),
        ("f", 1.0),
        ("trace", 1.5),
        ("trace", 1.5),
        ("trace", 3.5),
    ]
    assert merged.poll(5.0) == []
    merged.close()
    assert rep.closed and loss.closed and other.closed
    with pytest.raises(RuntimeError):
        merged.poll(6.0)


def test_held_replay_announces_the_fleet_then_plays_from_begin(data_dir):
    """The initial fleet at once; the rest of the trace on a clock that starts at ``begin`` (so
    engines loading do not eat into the trace), the same notices a replayer started there gives."""
    trace = load_trace(data_dir / "trace_0304_real.txt")
    cfg = TraceReplayConfig(speedup=60.0, grace_period_s=30.0)
    held = HeldReplay(trace, config=cfg, instance_ids=LIVE)
    first = held.poll(3.0)
    assert [(n.kind, n.instance_id, n.received_at_s) for n in first] == [("arrive", i, 3.0) for i in LIVE[:7]]
    assert held.poll(500.0) == []  # nothing plays before begin, however late
    held.begin(1000.0)
    with pytest.raises(RuntimeError, match="begun"):
        held.begin(1001.0)
    reference = TraceReplayer(trace, config=cfg, instance_ids=LIVE, start_at_s=1000.0)
    later = [n for n in reference.schedule if n.kind != "arrive" or n.received_at_s > 1000.0]
    assert held.poll(10_000.0) == later
    held.close()
    with pytest.raises(RuntimeError, match="closed"):
        held.poll(0.0)


def test_window_trace_is_what_the_replay_plays(data_dir):
    """The simulator's view of a live run: the window's events on the live clock, grace aside."""
    trace = load_trace(data_dir / "trace_0304_real.txt")
    win = window_trace(trace, start_s=300.0, end_s=1250.0, speedup=10.0)
    assert win.end_s == pytest.approx(95.0)
    # A_S: 7 up, node-7 at 240 s, node-8/9 at 360, node-8 gone at 600, node-10 at 900, two gone at 1200
    assert [(e.time_s, e.kind, len(e.instance_ids)) for e in win.events] == [
        (0.0, "add", 8),
        (6.0, "add", 2),
        (30.0, "remove", 1),
        (60.0, "add", 1),
        (90.0, "remove", 2),
    ]
    cfg = TraceReplayConfig(speedup=10.0, start_s=300.0, end_s=1250.0)
    rep = TraceReplayer(trace, config=cfg, instance_ids=LIVE, start_at_s=0.0)
    removals = sorted(n.deadline_s for n in rep.schedule if n.kind == "preempt")
    assert removals == sorted(e.time_s for e in win.events if e.kind == "remove" for _ in e.instance_ids)
    assert win.max_instances == 10
    with pytest.raises(ValueError, match="speedup"):
        window_trace(trace, speedup=0.0)
    with pytest.raises(ValueError, match="start_s"):
        window_trace(trace, start_s=2000.0)


def test_ray_node_watcher_turns_nodes_coming_and_going_into_notices():
    fleet = {"a", "b"}
    watcher = RayNodeWatcher(alive=lambda: set(fleet), interval_s=1.0)
    assert [(n.kind, n.instance_id, n.received_at_s) for n in watcher.poll(10.0)] == [
        ("arrive", "a", 10.0),
        ("arrive", "b", 10.0),
    ]
    fleet.discard("b")
    fleet.add("c")
    assert watcher.poll(10.5) == []  # within the interval: Ray is not asked again
    got = watcher.poll(11.0)
    assert [(n.kind, n.instance_id) for n in got] == [("arrive", "c"), ("terminated", "b")]
    assert all(n.deadline_s is None and n.source == "ray-nodes" for n in got)
    assert watcher.poll(20.0) == []  # each change once
    watcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        watcher.poll(30.0)
