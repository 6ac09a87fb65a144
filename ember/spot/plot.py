"""Latency-over-time plot with preemptions marked (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

from ember.spot.results import RunRecord


def plot_latency(records: list[RunRecord], path: str | Path, *, title: str = "") -> Path:
    """One scatter series per policy (request arrival time vs latency); red dashed lines at
    preemptions, green dotted lines at additions. Writes a PNG and returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for rec in records:
        ax.scatter(rec.arrival_s, rec.latency_s, s=6, alpha=0.6, label=rec.policy)
    marks = next((r.marks for r in records if r.marks), [])
    if marks:
        seen = set()
        for t, kind in marks:
            label = {"preempt": "preemption", "add": "instance added"}[kind]
            ax.axvline(
                t,
                color="red" if kind == "preempt" else "green",
                ls="--" if kind == "preempt" else ":",
                lw=0.8,
                label=None if label in seen else label,
            )
            seen.add(label)
    ax.set_xlabel("request arrival (s)")
    ax.set_ylabel("latency (s)")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
