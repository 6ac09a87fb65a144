"""The simulator's constants as one live run measured them (``ember bench spot-live``): a step
latency model fitted to the replicas' step logs, the cores the replicas had between them, the
engine start and the pause of a move."""

from __future__ import annotations

import os
from dataclasses import asdict

import numpy as np


def calibration(run: dict) -> dict:
    """The simulator's constants as this run measured them: a latency model fitted to the
    replicas' steps in CPU seconds (what a step costs on a core of its own; the simulator adds
    the sharing of this machine's cores), the engine start and the pause of a move."""
    from ember.kvcache.cost_model import LatencyModel

    steps = [s for s in run["step_samples"] if s[0]]
    starts = [d["ready_s"] for d in run["decisions"][1:] if d["started"]]
    first = run["decisions"][0]["ready_s"] if run["decisions"] else 10.0
    pauses = run["router"]["pauses_s"]

    def fit(column: int, source: str):
        if len(steps) < 8:
            return None
        return asdict(LatencyModel.fit_batches([(s[0], s[column]) for s in steps], source=source))

    return {
        "latency": fit(2, "live steps, CPU seconds"),
        "latency_wall": fit(1, "live steps, wall seconds"),
        "num_steps": len(steps),
        "cores": effective_cores(steps),
        "restart_overhead_s": float(np.median(starts)) if starts else first,
        "switch_overhead_s": float(np.median(pauses)) if pauses else 0.5,
    }


def effective_cores(steps: list) -> float:
    """How many cores the replicas' steps had between them, as measured: a step that ran while
    k steps ran (itself included) and took s times its CPU seconds had k / s cores' worth; the
    median over the steps that ran alongside others. (The router, Ray and the client take the
    rest of the machine.) The machine's core count when nothing ran alongside."""
    machine = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    timed = [(s[3], s[3] + s[1], s[1] / s[2]) for s in steps if len(s) > 3 and s[2] > 0]
    if not timed:
        return machine
    starts = np.sort([a for a, _, _ in timed])
    ends = np.sort([b for _, b, _ in timed])
    ratios = []
    for a, b, slow in timed:
        mid = (a + b) / 2
        running = int(np.searchsorted(starts, mid, side="right") - np.searchsorted(ends, mid, side="right"))
        if running >= 2:
            ratios.append(running / slow)
    return float(np.median(ratios)) if ratios else machine
