"""What one simulation run records, and the summary a user reads (latency percentiles,
throughput, requests lost, cost)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RunRecord:
    """Raw outcome of one run (filled by the simulator)."""

    policy: str
    arrival_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    marks: list[tuple[float, str]] = field(default_factory=list)  # (time, "add" | "preempt")
    # (t, config, mode, migration estimate, old replicas that serve on through the switch)
    reconfigurations: list[tuple[float, str, str, float, int]] = field(default_factory=list)
    spans: list[tuple[str, float, float, bool]] = field(default_factory=list)  # (instance, start, end, on-demand)
    recomputed_tokens: int = 0  # committed tokens re-prefilled (KV not moved)
    restarted_tokens: int = 0  # generated tokens thrown away
    resumed_tokens: int = 0  # committed tokens kept through a migration with their KV
    num_requests: int = 0
    num_lost: int = 0
    end_s: float = 0.0

    def add_latency(self, arrival_s: float, latency_s: float) -> None:
        self.arrival_s.append(arrival_s)
        self.latency_s.append(latency_s)

    def mark(self, t: float, kind: str) -> None:
        self.marks.append((t, kind))


@dataclass(frozen=True, kw_only=True)
class Summary:
    """Per-policy results; latencies in seconds, cost in dollars."""

    policy: str
    num_requests: int
    num_completed: int
    num_lost: int
    latency_mean_s: float
    latency_p50_s: float
    latency_p90_s: float
    latency_p99_s: float
    throughput_rps: float
    spot_instance_hours: float
    ondemand_instance_hours: float
    cost_usd: float
    num_reconfigurations: int
    recomputed_tokens: int
    restarted_tokens: int
    resumed_tokens: int
    duration_s: float

    def as_row(self) -> dict[str, object]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def summarize(record: RunRecord, *, spot_price_per_hour: float, ondemand_price_per_hour: float) -> Summary:
    lat = np.asarray(record.latency_s, dtype=float)
    arr = np.asarray(record.arrival_s, dtype=float)

    def pct(q: float) -> float:
        return float(np.percentile(lat, q)) if lat.size else float("nan")

    spot_h = sum(end - start for _, start, end, od in record.spans if not od) / 3600
    od_h = sum(end - start for _, start, end, od in record.spans if od) / 3600
    finish = arr + lat
    span = float(finish.max() - arr.min()) if lat.size else 0.0
    return Summary(
        policy=record.policy,
        num_requests=record.num_requests,
        num_completed=int(lat.size),
        num_lost=record.num_lost,
        latency_mean_s=float(lat.mean()) if lat.size else float("nan"),
        latency_p50_s=pct(50),
        latency_p90_s=pct(90),
        latency_p99_s=pct(99),
        throughput_rps=lat.size / span if span > 0 else 0.0,
        spot_instance_hours=spot_h,
        ondemand_instance_hours=od_h,
        cost_usd=spot_h * spot_price_per_hour + od_h * ondemand_price_per_hour,
        num_reconfigurations=len(record.reconfigurations),
        recomputed_tokens=record.recomputed_tokens,
        restarted_tokens=record.restarted_tokens,
        resumed_tokens=record.resumed_tokens,
        duration_s=record.end_s,
    )


_COLUMNS = [
    ("policy", "policy"),
    ("num_completed", "done"),
    ("num_lost", "lost"),
    ("latency_mean_s", "mean s"),
    ("latency_p50_s", "P50 s"),
    ("latency_p90_s", "P90 s"),
    ("latency_p99_s", "P99 s"),
    ("throughput_rps", "req/s"),
    ("cost_usd", "cost $"),
    ("num_reconfigurations", "reconf"),
]


def markdown_table(summaries: list[Summary]) -> str:
    """One row per policy, as a markdown table."""
    head = "| " + " | ".join(h for _, h in _COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in _COLUMNS) + "|"
    rows = []
    for s in summaries:
        cells = []
        for key, _ in _COLUMNS:
            v = getattr(s, key)
            cells.append(f"{v:.2f}" if isinstance(v, float) else str(v))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *rows])
