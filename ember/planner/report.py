"""Plans and their predictions as table rows (``ember plan``, ``ember bench plan``)."""

from __future__ import annotations

from ember.planner.cost_model import CostModel, PlanCost
from ember.planner.search import SearchResult, SearchSpace, search, search_pure

MIB = 2**20


def parse_bytes(text: str) -> float:
    """``"64MiB"``, ``"1.5GB"``, ``"4096"`` -> bytes; raises ValueError."""
    units = {
        "kib": 2**10,
        "mib": 2**20,
        "gib": 2**30,
        "tib": 2**40,
        "kb": 1e3,
        "mb": 1e6,
        "gb": 1e9,
        "tb": 1e12,
        "b": 1,
    }
    lowered = text.strip().lower()
    for suffix, scale in units.items():
        if lowered.endswith(suffix):
            return float(lowered[: -len(suffix)]) * scale
    return float(lowered)


def parse_ints(text: str | None, name: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"{name} must list positive integers, got {text!r}")
    return values


def alternatives(cost_model: CostModel, space: SearchSpace) -> dict[str, SearchResult]:
    """The searched plan, the best plan of each pipeline degree, and the pure strategies."""
    out = {"searched": search(cost_model, space)}
    n = space.num_devices
    pps = space.pp_degrees or tuple(p for p in (1, 2, 4, 8, 16, 32, 64) if p <= min(n, cost_model.model.num_layers))
    for pp in pps:
        if n % pp == 0:
            out[f"best pp={pp}"] = search(cost_model, space, pp_degrees=(pp,))
    for name, result in search_pure(cost_model, space).items():
        out[f"pure {name}"] = result
    return out


def plan_row(name: str, result: SearchResult, best: PlanCost | None) -> dict:
    if result.plan is None:
        return {
            "name": name,
            "plan": "does not fit",
            "step_s": None,
            "samples_per_s": None,
            "peak_mib": None,
            "vs_searched": None,
        }
    cost = result.cost
    return {
        "name": name,
        "plan": result.plan.describe(),
        "step_s": round(cost.iteration_s, 6),
        "samples_per_s": round(cost.samples_per_s, 3),
        "peak_mib": round(cost.peak_memory_bytes / MIB, 3),
        "vs_searched": None if best is None else round(cost.samples_per_s / best.samples_per_s, 3),
    }


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
