"""``ember bench plan``: the searched plan against the best pure strategies under several
memory budgets, all trained on this machine for a few steps, predicted beside measured.

Memory compared like with like: predicted = the cost model's states + in-flight
activations of the fullest device (transients left out); measured = the largest per-rank
sum of model-state bytes (parameters, gradients, AdamW moments) and the saved-activation
peak (``MemoryMeter``, after the first step). Step time: the median of the steps after
the first two (slowest rank), taken in each of ``rounds`` passes over all plans, best pass
kept, so a burst of load from other processes on the machine hits one pass, not the result.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path

from ember.planner.cost_model import CostModel
from ember.planner.profiler import ProfileSpec, profile
from ember.planner.report import MIB, markdown_table
from ember.planner.search import SearchSpace, search, search_pure
from ember.train.config import ModelShape

BENCH_MODELS = {
    # name: (shape, vocab, seq_len, global batch sizes)
    "bench": (
        ModelShape(
            hidden_size=128,
            num_layers=8,
            num_heads=4,
            num_kv_heads=4,
            intermediate_size=256,
            max_position_embeddings=128,
            tie_word_embeddings=False,
        ),
        256,
        64,
        (16,),
    ),
    "small": (
        ModelShape(
            hidden_size=64,
            num_layers=4,
            num_heads=4,
            num_kv_heads=4,
            intermediate_size=128,
            max_position_embeddings=64,
            tie_word_embeddings=False,
        ),
        128,
        32,
        (8,),
    ),
}
FAMILIES = ("searched", "dp", "zero3", "tp", "pp")


def run_plan_bench(
    *,
    model: str,
    num_devices: int,
    budget_fractions: tuple[float, ...],
    steps: int,
    out_dir: Path,
    rounds: int = 2,
    refresh: bool = False,
    progress: bool = True,
) -> dict:
    from ember.train.parallel.probe import run_jobs

    shape, vocab, seq_len, batches = BENCH_MODELS[model]
    spec = ProfileSpec(name=f"bench-{model}", shape=shape, vocab_size=vocab, seq_len=seq_len, max_devices=num_devices)
    model_profile, hardware = profile(spec, cache_dir=out_dir / "profile", refresh=refresh, progress=progress)
    cost_model = CostModel(model_profile, hardware)

    def space(budget: float) -> SearchSpace:
        return SearchSpace(
            num_devices=num_devices,
            memory_budget_bytes=budget,
            global_batch_sizes=batches,
            dp_types=("ddp", "zero3"),
            schedules=("1f1b",),
        )

    dp_peak = search_pure(cost_model, space(1e18))["dp"].cost.peak_memory_bytes
    cases = []  # (fraction, family, plan or None)
    for fraction in budget_fractions:
        budget = fraction * dp_peak
        found = {"searched": search(cost_model, space(budget)), **search_pure(cost_model, space(budget))}
        for family in FAMILIES:
            cases.append((fraction, budget, family, found[family].plan))
    unique = {}
    for _, _, _, plan in cases:
        if plan is not None:
            unique.setdefault(plan.to_json(), plan)
    run_spec = {
        "shape": dataclasses.asdict(shape),
        "vocab_size": vocab,
        "seq_len": seq_len,
        "steps": steps,
        "seed": 0,
        "lr": 1e-3,
    }
    if progress:
        print(
            f"bench: measuring {len(unique)} plans on {num_devices} ranks, {steps} steps each, {rounds} rounds ...",
            flush=True,
        )
    start = time.perf_counter()
    jobs = [(p, run_spec) for p in unique.values()] * rounds
    measured = run_jobs(jobs, folder=out_dir / "runs", timeout_s=3600)
    by_plan = {}
    for key, result in zip(list(unique) * rounds, measured):
        steady = statistics.median(result["step_s"][2:] or result["step_s"])
        if key not in by_plan or steady < by_plan[key]["steady_s"]:
            by_plan[key] = {**result, "steady_s": steady}
    rows = []
    for fraction, budget, family, plan in cases:
        row = {"budget": f"{fraction:g} x DP ({budget / MIB:.1f} MiB)", "family": family}
        if plan is None:
            rows.append({**row, "plan": "does not fit"})
            continue
        rows.append({**row, **_compare(cost_model, plan, by_plan[plan.to_json()])})
    for fraction in budget_fractions:
        group = [r for r in rows if r["budget"].startswith(f"{fraction:g} x") and "meas_s" in r]
        searched = next((r for r in group if r["family"] == "searched"), None)
        for r in group:
            if searched is not None:
                r["searched_speedup"] = round(r["meas_s"] / searched["meas_s"], 3)
    columns = [
        "budget",
        "family",
        "plan",
        "pred_s",
        "meas_s",
        "time_err_%",
        "pred_mib",
        "meas_mib",
        "mem_err_%",
        "searched_speedup",
    ]
    table = markdown_table(rows, columns)
    payload = {
        "model": model,
        "num_devices": num_devices,
        "steps": steps,
        "rounds": rounds,
        "dp_peak_bytes": dp_peak,
        "rows": rows,
        "measure_seconds": time.perf_counter() - start,
        "hardware": hardware.to_dict(),
        "markdown": table,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "plan_bench.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    (out_dir / "plan_bench.md").write_text(table + "\n")
    payload["json_path"] = str(path)
    return payload


def _compare(cost_model: CostModel, plan, result: dict) -> dict:
    cost = cost_model.evaluate(plan)
    pred_mem = max(s.state_bytes + s.activation_bytes for s in cost.stages)
    meas_mem = max(r["state_bytes"] + r["activation_peak_bytes"] for r in result["ranks"])
    meas_s = result["steady_s"]
    return {
        "plan": plan.describe(),
        "pred_s": round(cost.iteration_s, 5),
        "meas_s": round(meas_s, 5),
        "time_err_%": round(100 * (cost.iteration_s - meas_s) / meas_s, 1),
        "pred_mib": round(pred_mem / MIB, 3),
        "meas_mib": round(meas_mem / MIB, 3),
        "mem_err_%": round(100 * (pred_mem - meas_mem) / meas_mem, 1),
    }
