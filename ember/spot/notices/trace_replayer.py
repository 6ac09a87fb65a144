"""Real spot availability traces replayed as live notices, time-compressed, onto a live fleet.

The trace is read by `ember.spot.traces` (any format it loads); each removal becomes a "preempt"
notice a grace period before it (the simulator's rule, `Simulator.run`), each addition an "arrive"
notice. Trace time `t` plays at `start_at_s + (t - start_s) / speedup` on the caller's monotonic
clock, and the grace period shrinks by the same factor, so the executor sees the trace's
pressure in minutes instead of hours.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ember.spot.notices.notice import NoticeKind, PreemptionNotice
from ember.spot.notices.source import NoticeSource
from ember.spot.traces import AvailabilityTrace, load_segment_trace

# The SpotServe paper's availability traces (README of shared/data/spotserve), by their names there.
PAPER_SEGMENTS = {
    "A_S": "trace_0304_real.txt",
    "B_S": "trace_0506_real.txt",
    "A_S+O": "trace_0304_ondemand.txt",
    "B_S+O": "trace_0506_ondemand.txt",
}


def paper_segment(name: str, trace_dir: str | Path) -> AvailabilityTrace:
    """Load the paper's segment `name` ("A_S", "B_S", "A_S+O", "B_S+O") from `trace_dir`
    (e.g. `shared/data/spotserve/trace/trace_seg`)."""
    if name not in PAPER_SEGMENTS:
        raise ValueError(f"paper_segment: name must be one of {sorted(PAPER_SEGMENTS)}, got {name!r}")
    return load_segment_trace(Path(trace_dir) / PAPER_SEGMENTS[name])


@dataclass(frozen=True, kw_only=True)
class TraceReplayConfig:
    """`speedup`: trace seconds per live second (60: one trace hour plays in one minute).
    `grace_period_s`: trace seconds between a notice and its removal (Ember's simulator and the
    SpotServe artifact use 30 s; AWS gives 120 s). `start_s`/`end_s`: the trace window to play
    (end None: the trace's end). `announce_initial`: emit "arrive" at the start for the instances
    alive then, so an executor learns its whole fleet from the notices."""

    speedup: float = 1.0
    grace_period_s: float = 30.0
    start_s: float = 0.0
    end_s: float | None = None
    announce_initial: bool = True
    source: str = "trace"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.speedup) and self.speedup > 0):
            raise ValueError(f"TraceReplayConfig.speedup must be > 0, got {self.speedup}")
        if not self.grace_period_s >= 0:
            raise ValueError(f"TraceReplayConfig.grace_period_s must be >= 0, got {self.grace_period_s}")
        if not self.start_s >= 0:
            raise ValueError(f"TraceReplayConfig.start_s must be >= 0, got {self.start_s}")
        if self.end_s is not None and not self.end_s > self.start_s:
            raise ValueError(f"TraceReplayConfig.end_s ({self.end_s}) must be > start_s ({self.start_s})")
        if not self.source:
            raise ValueError("TraceReplayConfig.source must not be empty")


class TraceReplayer(NoticeSource):
    """Plays `trace` from `config.start_s`, with trace time `start_s` at monotonic `start_at_s`.

    Trace instances are mapped onto the caller's live `instance_ids` by slot: an arriving trace
    instance takes the first live id that is free, a removed one frees its id at its removal, so
    a fixed live fleet stands in for the trace's ever-new instances. `instance_ids` must hold at
    least as many ids as the trace has alive at once in the window (ValueError otherwise).

    A notice's `received_at_s` is its scheduled time (not the poll's), so the replay is exact
    however often it is polled. Throughput ("rate") events are not notices and are skipped."""

    def __init__(
        self, trace: AvailabilityTrace, *, config: TraceReplayConfig, instance_ids: Sequence[str], start_at_s: float
    ) -> None:
        if len(set(instance_ids)) != len(instance_ids) or not all(instance_ids):
            raise ValueError("TraceReplayer.instance_ids must be distinct, non-empty ids")
        if not math.isfinite(start_at_s):
            raise ValueError(f"TraceReplayer.start_at_s must be finite, got {start_at_s}")
        self.trace = trace
        self.config = config
        self.start_at_s = start_at_s
        self._live_ids = tuple(instance_ids)
        self._schedule, self._initial, self._mapping = self._plan()
        self._next = 0

    # -- the plan, computed once ----------------------------------------------------------------
    def live_time(self, trace_s: float) -> float:
        """The monotonic time at which trace time `trace_s` plays."""
        return self.start_at_s + (trace_s - self.config.start_s) / self.config.speedup

    def _plan(self) -> tuple[tuple[PreemptionNotice, ...], tuple[str, ...], dict[str, str]]:
        cfg = self.config
        end = self.trace.end_s if cfg.end_s is None else min(cfg.end_s, self.trace.end_s)
        order = {live: k for k, live in enumerate(self._live_ids)}
        free = list(self._live_ids)  # kept in the caller's order: the lowest free slot is taken first
        slot: dict[str, str] = {}  # trace id -> live id, while alive
        mapping: dict[str, str] = {}  # trace id -> live id, ever
        added_at: dict[str, float] = {}

        def take(trace_id: str, t: float) -> str:
            if not free:
                raise ValueError(
                    f"TraceReplayer.instance_ids: {len(self._live_ids)} ids are too few, "
                    f"{self.trace.source or 'the trace'} has more instances alive at {t:g}s"
                )
            live = free.pop(0)
            slot[trace_id] = mapping[trace_id] = live
            added_at[trace_id] = t
            return live

        def release(trace_id: str) -> str:
            live = slot.pop(trace_id)
            free.append(live)
            free.sort(key=order.__getitem__)
            return live

        events = [ev for ev in self.trace.events if ev.kind != "rate" and ev.time_s <= end]
        # the fleet at the start, events at start_s included: no notices for its past
        for ev in (e for e in events if e.time_s <= cfg.start_s):
            for tid in ev.instance_ids:
                if ev.kind == "add":
                    take(tid, ev.time_s)
                else:
                    release(tid)
        initial = tuple(slot.values())

        notices: list[PreemptionNotice] = []
        if cfg.announce_initial:
            notices += [self._notice(live, "arrive", self.start_at_s, None) for live in initial]
        for ev in (e for e in events if e.time_s > cfg.start_s):
            for tid in ev.instance_ids:
                if ev.kind == "add":
                    notices.append(self._notice(take(tid, ev.time_s), "arrive", self.live_time(ev.time_s), None))
                    continue
                # NOTE: as in the simulator, the notice comes a grace period early, but never before
                # the replay starts or the instance arrived (its arrive notice must come first)
                notice_t = max(ev.time_s - cfg.grace_period_s, cfg.start_s, added_at[tid])
                live = release(tid)
                notices.append(self._notice(live, "preempt", self.live_time(notice_t), self.live_time(ev.time_s)))
        # stable: notices at one time keep the trace's order (an early notice may overtake later events)
        notices.sort(key=lambda n: n.received_at_s)
        return tuple(notices), initial, mapping

    def _notice(self, live: str, kind: NoticeKind, at_s: float, deadline_s: float | None) -> PreemptionNotice:
        return PreemptionNotice(
            instance_id=live, kind=kind, deadline_s=deadline_s, source=self.config.source, received_at_s=at_s
        )

    # -- what the executor sees -----------------------------------------------------------------
    @property
    def schedule(self) -> tuple[PreemptionNotice, ...]:
        """Every notice the replay will emit, in order (polled or not)."""
        return self._schedule

    @property
    def initial_instances(self) -> tuple[str, ...]:
        """Live ids alive when the replay starts."""
        return self._initial

    @property
    def mapping(self) -> dict[str, str]:
        """Trace instance id -> the live id that played it."""
        return dict(self._mapping)

    @property
    def done(self) -> bool:
        return self._next >= len(self._schedule)

    def poll(self, now_s: float) -> list[PreemptionNotice]:
        self._check_open()
        start = self._next
        while self._next < len(self._schedule) and self._schedule[self._next].received_at_s <= now_s:
            self._next += 1
        return list(self._schedule[start : self._next])


class HeldReplay(NoticeSource):
    """A `TraceReplayer` whose trace clock starts at `begin(at_s)`: until then it emits only the
    arrivals of the fleet alive at the window's start, so the time that fleet takes to start
    serving (engines loading) does not eat into the trace."""

    def __init__(self, trace: AvailabilityTrace, *, config: TraceReplayConfig, instance_ids: Sequence[str]) -> None:
        self.trace, self.config, self.instance_ids = trace, config, tuple(instance_ids)
        probe = TraceReplayer(trace, config=config, instance_ids=instance_ids, start_at_s=0.0)  # validates
        self.initial_instances = probe.initial_instances
        self._initial = list(probe.initial_instances) if config.announce_initial else []  # for the first poll
        self.replayer: TraceReplayer | None = None

    def begin(self, at_s: float) -> TraceReplayer:
        if self.replayer is not None:
            raise RuntimeError("HeldReplay.begin: the replay has begun already")
        config = replace(self.config, announce_initial=False)
        self.replayer = TraceReplayer(self.trace, config=config, instance_ids=self.instance_ids, start_at_s=at_s)
        return self.replayer

    def poll(self, now_s: float) -> list[PreemptionNotice]:
        self._check_open()
        out = [
            PreemptionNotice(
                instance_id=i, kind="arrive", deadline_s=None, source=self.config.source, received_at_s=now_s
            )
            for i in self._initial
        ]
        self._initial = []
        return out + (self.replayer.poll(now_s) if self.replayer is not None else [])
