"""Instance-availability traces: loaders for SpotServe's CSV and JSON-line segments, SkyPilot's
count series, and a seeded synthetic generator. All return one `AvailabilityTrace`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ember.errors import InvalidInputError

EventKind = Literal["add", "remove", "rate"]


@dataclass(frozen=True, kw_only=True)
class AvailabilityEvent:
    """At `time_s`, instances appear ("add"), are taken back ("remove": the instance is gone at
    `time_s`; the cloud's notice comes a grace period earlier) or the throughput target changes."""

    time_s: float
    kind: EventKind
    instance_ids: tuple[str, ...] = ()
    required_rate: float | None = None

    def __post_init__(self) -> None:
        if self.time_s < 0:
            raise ValueError(f"AvailabilityEvent.time_s must be >= 0, got {self.time_s}")
        if self.kind not in ("add", "remove", "rate"):
            raise ValueError(f"AvailabilityEvent.kind must be add|remove|rate, got {self.kind!r}")
        if self.kind == "rate" and (self.required_rate is None or self.required_rate < 0):
            raise ValueError(f"AvailabilityEvent.required_rate must be >= 0 for a rate event, got {self.required_rate}")
        if self.kind != "rate" and not self.instance_ids:
            raise ValueError(f"AvailabilityEvent.instance_ids must not be empty for {self.kind}")


@dataclass(frozen=True, kw_only=True)
class AvailabilityTrace:
    """Time-ordered events; every removed instance was added before and is removed once."""

    events: tuple[AvailabilityEvent, ...]
    end_s: float
    source: str = ""

    def __post_init__(self) -> None:
        alive: set[str] = set()
        seen: set[str] = set()
        last = 0.0
        for i, ev in enumerate(self.events):
            if ev.time_s < last:
                raise InvalidInputError(f"{self.source}: event {i} at {ev.time_s}s is out of order", param="trace")
            last = ev.time_s
            for iid in ev.instance_ids:
                if ev.kind == "add":
                    if iid in seen:
                        raise InvalidInputError(f"{self.source}: instance {iid} added twice", param="trace")
                    seen.add(iid)
                    alive.add(iid)
                elif ev.kind == "remove":
                    if iid not in alive:
                        raise InvalidInputError(f"{self.source}: instance {iid} removed but not alive", param="trace")
                    alive.remove(iid)
        if self.end_s < last:
            raise InvalidInputError(f"{self.source}: end {self.end_s}s before the last event {last}s", param="trace")

    def alive_at(self, time_s: float) -> set[str]:
        alive: set[str] = set()
        for ev in self.events:
            if ev.time_s > time_s:
                break
            if ev.kind == "add":
                alive.update(ev.instance_ids)
            elif ev.kind == "remove":
                alive.difference_update(ev.instance_ids)
        return alive

    def lifetimes(self) -> dict[str, tuple[float, float]]:
        """instance -> (added, removed or trace end)."""
        spans: dict[str, list[float]] = {}
        for ev in self.events:
            for iid in ev.instance_ids:
                if ev.kind == "add":
                    spans[iid] = [ev.time_s, self.end_s]
                elif ev.kind == "remove":
                    spans[iid][1] = ev.time_s
        return {k: (a, b) for k, (a, b) in spans.items()}

    @property
    def max_instances(self) -> int:
        count = best = 0
        for ev in self.events:
            count += len(ev.instance_ids) if ev.kind == "add" else -len(ev.instance_ids) if ev.kind == "remove" else 0
            best = max(best, count)
        return best


def window_trace(
    trace: AvailabilityTrace, *, start_s: float = 0.0, end_s: float | None = None, speedup: float = 1.0
) -> AvailabilityTrace:
    """The window ``[start_s, end_s]`` of ``trace`` on a clock that starts at the window and runs
    ``speedup`` times faster (what ``TraceReplayer`` plays live): the instances alive at
    ``start_s`` are added at 0; rate events are dropped."""
    if not speedup > 0:
        raise ValueError(f"window_trace: speedup must be > 0, got {speedup}")
    end = trace.end_s if end_s is None else min(end_s, trace.end_s)
    if not end > start_s >= 0:
        raise ValueError(f"window_trace: need 0 <= start_s < end_s, got [{start_s}, {end}]")
    alive = trace.alive_at(start_s)
    events = [AvailabilityEvent(time_s=0.0, kind="add", instance_ids=tuple(sorted(alive)))] if alive else []
    events += [
        AvailabilityEvent(time_s=(ev.time_s - start_s) / speedup, kind=ev.kind, instance_ids=ev.instance_ids)
        for ev in trace.events
        if start_s < ev.time_s <= end and ev.kind != "rate"
    ]
    source = f"{trace.source}[{start_s:g}:{end:g}]" + (f"/{speedup:g}" if speedup != 1 else "")
    return AvailabilityTrace(events=tuple(events), end_s=(end - start_s) / speedup, source=source)


def _group(rows: list[tuple[float, str, str]]) -> list[AvailabilityEvent]:
    """Merge consecutive rows with the same time and kind into one event."""
    events: list[AvailabilityEvent] = []
    for t, kind, iid in rows:
        if events and events[-1].time_s == t and events[-1].kind == kind:
            prev = events[-1]
            events[-1] = AvailabilityEvent(time_s=t, kind=kind, instance_ids=prev.instance_ids + (iid,))  # type: ignore[arg-type]
        else:
            events.append(AvailabilityEvent(time_s=t, kind=kind, instance_ids=(iid,)))  # type: ignore[arg-type]
    return events


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        raise InvalidInputError(f"trace file not found: {path}", param="trace") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read trace {path}: {exc}", param="trace") from None


def load_csv_trace(path: str | Path) -> AvailabilityTrace:
    """`ms,add|remove,nodeN` per line (SpotServe `trace_full/g4dn.csv`, Bamboo)."""
    path = Path(path)
    rows = []
    for lineno, line in enumerate(_read_lines(path), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or parts[1] not in ("add", "remove"):
            raise InvalidInputError(f"{path}:{lineno}: expected 'ms,add|remove,node', got {line!r}", param="trace")
        try:
            t = float(parts[0]) / 1000.0
        except ValueError:
            raise InvalidInputError(f"{path}:{lineno}: bad time {parts[0]!r}", param="trace") from None
        rows.append((t, parts[1], parts[2]))
    events = _group(rows)
    end = events[-1].time_s if events else 0.0
    return AvailabilityTrace(events=tuple(events), end_s=end, source=str(path))


def load_segment_trace(path: str | Path) -> AvailabilityTrace:
    """JSON lines `[ms, "add"|"remove"|"other"|"DONE", {"nodes": [...], "required_tpt"?: r}]`."""
    path = Path(path)
    events: list[AvailabilityEvent] = []
    end = None
    for lineno, line in enumerate(_read_lines(path), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            ms, op, info = json.loads(line)
            t = float(ms) / 1000.0
            nodes = tuple(str(n) for n in info.get("nodes", []))
            rate = info.get("required_tpt")
        except (ValueError, TypeError, AttributeError):
            raise InvalidInputError(
                f'{path}:{lineno}: expected [ms, op, {{"nodes": [...]}}], got {line!r}', param="trace"
            ) from None
        if op in ("add", "remove"):
            if nodes:
                events.append(AvailabilityEvent(time_s=t, kind=op, instance_ids=nodes))
        elif op == "DONE":
            end = t
            break
        elif op != "other":
            raise InvalidInputError(f"{path}:{lineno}: unknown operation {op!r}", param="trace")
        if rate is not None:
            events.append(AvailabilityEvent(time_s=t, kind="rate", required_rate=float(rate)))
    last = events[-1].time_s if events else 0.0
    return AvailabilityTrace(events=tuple(events), end_s=end if end is not None else last, source=str(path))


def counts_to_trace(counts: list[int], gap_s: float, *, source: str = "", prefix: str = "i") -> AvailabilityTrace:
    """A count series (instances alive at each tick) as events; a drop removes the newest."""
    for tick, n in enumerate(counts):
        if n < 0:
            raise InvalidInputError(f"{source}: negative count {n} at tick {tick}", param="trace")
    events = _follow_counts([(tick * gap_s, n) for tick, n in enumerate(counts)], prefix)
    return AvailabilityTrace(events=tuple(events), end_s=len(counts) * gap_s, source=source)


def _follow_counts(points: list[tuple[float, int]], prefix: str) -> list[AvailabilityEvent]:
    """Events that make ``n`` instances alive at each ``(time, n)``: new ids ``prefix0, ...``
    added, the newest removed first."""
    alive: list[str] = []
    events: list[AvailabilityEvent] = []
    next_id = 0
    for t, n in points:
        if n > len(alive):
            ids = tuple(f"{prefix}{next_id + k}" for k in range(n - len(alive)))
            next_id += len(ids)
            alive.extend(ids)
            events.append(AvailabilityEvent(time_s=t, kind="add", instance_ids=ids))
        elif n < len(alive):
            events.append(AvailabilityEvent(time_s=t, kind="remove", instance_ids=tuple(alive[n:])))
            del alive[n:]
    return events


def scale_trace(trace: AvailabilityTrace, factor: float, *, min_instances: int = 1) -> AvailabilityTrace:
    """The trace's instance count times ``factor`` (rounded, at least ``min_instances``) at the
    same times: a fleet of 7-10 instances played on 3-4. A drop removes the newest instances
    (as ``counts_to_trace``); rate events are dropped."""
    if not factor > 0:
        raise ValueError(f"scale_trace: factor must be > 0, got {factor}")
    points, count = [], 0
    for t in sorted({ev.time_s for ev in trace.events if ev.kind != "rate"}):
        for ev in trace.events:
            if ev.time_s == t and ev.kind != "rate":
                count += len(ev.instance_ids) if ev.kind == "add" else -len(ev.instance_ids)
        points.append((t, max(min_instances, round(count * factor)) if count else 0))
    events = _follow_counts(points, "s")
    return AvailabilityTrace(events=tuple(events), end_s=trace.end_s, source=f"{trace.source}x{factor:g}")


def load_skypilot_trace(path: str | Path) -> AvailabilityTrace:
    """SkyPilot spot-traces JSON `{"metadata": {"gap_seconds": g}, "data": [n0, n1, ...]}`."""
    path = Path(path)
    try:
        raw = json.loads("\n".join(_read_lines(path)))
        gap = float(raw["metadata"]["gap_seconds"])
        counts = [int(x) for x in raw["data"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(
            f"{path}: expected SkyPilot JSON with gap_seconds and data ({exc})", param="trace"
        ) from None
    return counts_to_trace(counts, gap, source=str(path))


def load_trace(path: str | Path) -> AvailabilityTrace:
    """Pick the loader by content: JSON object (SkyPilot), JSON lines (segments) or CSV."""
    path = Path(path)
    head = next((ln.strip() for ln in _read_lines(path) if ln.strip() and not ln.startswith("#")), "")
    if head.startswith("{"):
        return load_skypilot_trace(path)
    if head.startswith("["):
        return load_segment_trace(path)
    return load_csv_trace(path)


def synthetic_trace(
    *, initial: int, duration_s: float, mean_lifetime_s: float, mean_gap_s: float, max_instances: int, seed: int = 0
) -> AvailabilityTrace:
    """Seeded synthetic availability: `initial` instances at t=0; each lives Exp(mean_lifetime);
    new instances arrive as a Poisson process (mean gap) while fewer than `max_instances` live."""
    if initial < 0 or max_instances <= 0 or initial > max_instances:
        raise InvalidInputError(f"synthetic trace: need 0 <= initial ({initial}) <= max_instances ({max_instances})")
    if duration_s <= 0 or mean_lifetime_s <= 0 or mean_gap_s <= 0:
        raise InvalidInputError("synthetic trace: duration, mean_lifetime and mean_gap must be positive")
    rng = np.random.default_rng(seed)
    rows: list[tuple[float, str, str]] = []
    deaths: dict[str, float] = {}
    next_id = 0

    def spawn(t: float) -> None:
        nonlocal next_id
        iid = f"syn{next_id}"
        next_id += 1
        rows.append((t, "add", iid))
        deaths[iid] = t + float(rng.exponential(mean_lifetime_s))

    for _ in range(initial):
        spawn(0.0)
    t = 0.0
    while True:
        t += float(rng.exponential(mean_gap_s))
        if t >= duration_s:
            break
        alive = [i for i, d in deaths.items() if d > t]
        if len(alive) < max_instances:
            spawn(round(t, 3))
    for iid, d in deaths.items():
        if d < duration_s:
            rows.append((round(d, 3), "remove", iid))
    rows.sort(key=lambda r: (r[0], r[1] != "add"))
    return AvailabilityTrace(events=tuple(_group(rows)), end_s=duration_s, source=f"synthetic(seed={seed})")
