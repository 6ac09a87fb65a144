"""`ember bench serve` results: JSON, a markdown table, and a PNG of latency and throughput
against request rate (one line per server and workload)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ember.bench.report import markdown_table, write_json

TABLE_COLUMNS = [
    "server",
    "workload",
    "request_rate",
    "completed",
    "failed",
    "request_throughput",
    "output_throughput",
    "goodput",
    "mean_ttft_ms",
    "p50_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "p99_tpot_ms",
    "p50_itl_ms",
    "p99_itl_ms",
    "p50_e2e_ms",
    "p99_e2e_ms",
    "prefix_hit_rate",
]

_PANELS = [
    ("p50_ttft_ms", "p99_ttft_ms", "TTFT (ms)"),
    ("p50_tpot_ms", "p99_tpot_ms", "TPOT (ms)"),
    ("p50_e2e_ms", "p99_e2e_ms", "end-to-end latency (ms)"),
    ("output_throughput", None, "output tokens / s"),
]


def write_report(rows: list[dict[str, Any]], payload: dict[str, Any], out: Path) -> list[Path]:
    """``out`` without suffix: writes out.json, out.md and out.png."""
    out = Path(out)
    table = markdown_table(rows, [c for c in TABLE_COLUMNS if any(c in r for r in rows)])
    paths = [write_json(out.with_suffix(".json"), {**payload, "results": rows})]
    md = out.with_suffix(".md")
    md.write_text(f"{payload.get('command', '')}\n\n{table}\n")
    paths += [md, plot(rows, out.with_suffix(".png"))]
    return paths


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = [r["request_rate"] for r in rows if not math.isinf(r["request_rate"])]
    inf_at = max(finite, default=1.0) * 2  # "as fast as possible" drawn to the right of the rest
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    series: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        series.setdefault((row["server"], row["workload"]), []).append(row)
    for ax, (median, tail, title) in zip(axes.flat, _PANELS):
        for (server, workload), points in series.items():
            points = sorted(points, key=lambda r: r["request_rate"])
            xs = [inf_at if math.isinf(r["request_rate"]) else r["request_rate"] for r in points]
            label = workload if len(series) == len({w for _, w in series}) else f"{workload} | {server}"
            (line,) = ax.plot(xs, [r[median] for r in points], marker="o", label=label)
            if tail:
                ax.plot(xs, [r[tail] for r in points], marker="x", linestyle="--", color=line.get_color())
        ticks = sorted({inf_at if math.isinf(r["request_rate"]) else r["request_rate"] for r in rows})
        ax.set_xticks(ticks, [("inf" if x == inf_at and x not in finite else f"{x:g}") for x in ticks])
        ax.set_title(title + ("  (o p50, x p99)" if tail else ""))
        ax.set_xlabel("request rate (sessions/s; inf = all at once)")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
