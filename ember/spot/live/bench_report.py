"""What ``ember bench spot-live`` shows: the table rows, the P99 ratios, the plot."""

from __future__ import annotations

from pathlib import Path

from ember.spot.live.bench import SpotLiveBenchConfig


def table_rows(payload: dict) -> list[dict]:
    rows = []
    for run in payload["runs"]:
        live, sim = run["live"], run["sim"]
        rows.append(
            {"round": run["round"] + 1, "policy": run["policy"]}
            | {k: v for k, v in live.items() if k != "configs"}
            | {
                "sim P50 s": sim["P50 s"],
                "sim P99 s": sim["P99 s"],
                "sim/live P99": sim["P99 s"] / live["P99 s"] if live["P99 s"] else float("nan"),
                "same configs": live["configs"] == sim["configs"],
                "cost $": payload["cost_usd"],
                "load": run["load_avg_1m"],
            }
        )
    return rows


COLUMNS = [
    "round", "policy", "done", "lost", "wrong outputs", "mean s", "P50 s", "P99 s", "with KV", "recomputed",
    "restarted", "recovered", "pause P50 s", "pause P99 s", "reconf", "sim P50 s", "sim P99 s", "sim/live P99",
    "same configs", "cost $", "load",
]  # fmt: skip


def p99_ratios(payload: dict) -> dict[str, float]:
    """Per round: the best baseline's live P99 over SpotServe's (> 1: SpotServe better)."""
    out = {}
    for k in sorted({r["round"] for r in payload["runs"]}):
        by = {r["policy"]: r["live"]["P99 s"] for r in payload["runs"] if r["round"] == k}
        base = [v for p, v in by.items() if p != "spotserve"]
        if "spotserve" in by and base:
            out[f"round {k + 1}"] = min(base) / by["spotserve"]
    return out


def plot(payload: dict, path: Path) -> Path:
    """Live latency over arrival time per policy (left), the simulator's (right); preemption
    notices and removals marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    arrivals = payload["arrival_s"]
    last_round = max(r["round"] for r in payload["runs"])
    for run in (r for r in payload["runs"] if r["round"] == last_round):
        lat = list(run["latency"].values())
        pts = [(a, v) for a, v in zip(arrivals, lat) if v is not None]
        axes[0].scatter([a for a, _ in pts], [v for _, v in pts], s=8, alpha=0.7, label=run["policy"])
        axes[1].scatter(run["sim"]["arrival_s"], run["sim"]["latency_s"], s=8, alpha=0.7, label=run["policy"])
    cfg = payload["config"]
    window = SpotLiveBenchConfig(**cfg | {"policies": tuple(cfg["policies"])}).window()
    grace = cfg["grace_period_s"] / cfg["speedup"]
    for ax in axes:
        for ev in window.events:
            if ev.kind == "remove":
                ax.axvspan(max(0.0, ev.time_s - grace), ev.time_s, color="red", alpha=0.12)
            elif ev.time_s > 0:
                ax.axvline(ev.time_s, color="green", ls=":", lw=0.8)
        ax.set_xlabel("request arrival (live s; red: notice to removal, green: instance added)")
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_ylabel("latency (s)")
    axes[0].set_title(f"live: {cfg['trace']} [{cfg['start_s']:g}, {cfg['end_s']:g}] s at {cfg['speedup']:g}x")
    axes[1].set_title("simulator, calibrated by the live run")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
