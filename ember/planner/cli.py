"""``ember plan`` (profile + search; prints and saves the plan with its alternatives) and
``ember bench plan`` (searched plan vs the pure strategies, measured side by side)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ember.errors import InvalidInputError

_SPACE_FLAGS = (
    ("--num-devices", "devices (ranks) to plan for (a power of two)", "4"),
    ("--memory-budget", "per-device memory budget, e.g. 64MiB, 2GB (default: unlimited)", None),
    ("--global-batch-sizes", "comma-separated candidates (default: the recipe's batch_size x grad_accum)", None),
    ("--micro-batches", "comma-separated micro-batch counts (default: powers of two)", None),
    ("--pp-degrees", "comma-separated pipeline degrees (default: powers of two)", None),
    ("--dp-types", "data-parallel kinds to consider", "ddp,zero2,zero3"),
    ("--schedules", "pipeline schedules to consider", "1f1b,gpipe"),
)
_MODEL_FLAGS = (
    ("--recipe", "the model of this recipe (see ember train --list-recipes)", "ember-debug"),
    ("--seq-len", "sequence length (default: the recipe's)", None),
    (
        "--profile-devices",
        "ranks of the hardware profile and the largest TP degree (default: min(num-devices, 4))",
        None,
    ),
    ("--cache-dir", "profile cache (default: $EMBER_CACHE/planner)", None),
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="profile a model on this machine and search a hybrid-parallel plan",
        description="Galvatron-style search: profile (cached), decision-tree pruning, dynamic "
        "programming over layers under a per-device memory budget. Prints the plan with a "
        "table of alternatives and saves it for `ember train --plan`.",
    )
    _add_common(parser)
    parser.add_argument("--out", default="plan.json", help="where to save the plan")
    parser.add_argument(
        "--analytic",
        action="store_true",
        help="price a synthetic 8-GPU-per-node cluster and FLOP-count model instead of measuring this machine",
    )
    parser.set_defaults(func=run_plan)


def _add_common(parser: argparse.ArgumentParser) -> None:
    for flag, help_text, default in _MODEL_FLAGS + _SPACE_FLAGS:
        parser.add_argument(flag, default=default, help=help_text)
    parser.add_argument("--refresh-profile", action="store_true", help="measure again")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines")


def add_bench_parser(kinds) -> None:
    """`ember bench plan` (registered by ``ember.bench.cli``)."""
    parser = kinds.add_parser(
        "plan",
        help="searched plan vs pure DP/ZeRO-3/TP/PP under memory budgets, measured",
        description="For each budget (a fraction of the best pure-DP plan's predicted "
        "memory), search a plan and the best pure strategies, train each for a few steps "
        "on this machine, and report predicted vs measured step time and memory.",
    )
    parser.add_argument("--num-devices", default="4", help="ranks (default 4)")
    parser.add_argument(
        "--budgets", default="1.0,0.6,0.4,0.3", help="memory budgets as fractions of pure DP's predicted peak"
    )
    parser.add_argument("--steps", default="6", help="training steps per plan (2 are warmup)")
    parser.add_argument("--rounds", default="2", help="passes over all plans (best kept)")
    parser.add_argument("--model", default="bench", help="bench (8 x 128) or small (4 x 64)")
    parser.add_argument("--out", default="bench_out/plan", help="output folder")
    parser.add_argument("--refresh-profile", action="store_true", help="measure again")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines")
    parser.set_defaults(func=run_bench_plan)


def run_plan(args: argparse.Namespace) -> int:
    from ember.planner.report import alternatives, markdown_table, plan_row

    cost_model, space = _problem(args)
    results = alternatives(cost_model, space)
    best = results["searched"]
    if best.plan is None:
        raise InvalidInputError(
            f"no plan fits {space.memory_budget_bytes / 2**20:.1f} MiB per device on "
            f"{space.num_devices} devices; raise --memory-budget or add devices"
        )
    rows = [plan_row(name, r, best.cost) for name, r in results.items()]
    print(
        f"model {cost_model.model.name}: {cost_model.model.num_layers} layers, "
        f"{space.num_devices} devices, budget "
        f"{space.memory_budget_bytes / 2**20:.1f} MiB/device; searched in "
        f"{best.seconds:.2f} s ({best.num_configs} configurations in full)"
    )
    print(f"plan: {best.plan.describe()}")
    print(
        f"predicted: {best.cost.iteration_s:.4g} s/step, {best.cost.samples_per_s:.4g} "
        f"samples/s, peak {best.cost.peak_memory_bytes / 2**20:.2f} MiB/device\n"
    )
    print(markdown_table(rows, ["name", "plan", "step_s", "samples_per_s", "peak_mib", "vs_searched"]))
    prediction = {
        "iteration_s": best.cost.iteration_s,
        "samples_per_s": best.cost.samples_per_s,
        "peak_memory_bytes": best.cost.peak_memory_bytes,
        "stage_memory_bytes": [s.memory_bytes for s in best.cost.stages],
    }
    out = Path(args.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    best.plan.save(out, prediction=prediction, alternatives=rows)
    print(
        f"\nsaved {out}; run it with: torchrun --nproc-per-node {space.num_devices} "
        f"--master-addr 127.0.0.1 -m ember.train --recipe {args.recipe} --plan {out} "
        "--out runs/planned"
    )
    return 0


def _problem(args: argparse.Namespace):
    """(cost model, search space) from the command line."""
    from ember.planner.cost_model import CostModel
    from ember.planner.profiler import ProfileSpec, profile
    from ember.planner.profiles import analytic_model, cluster_hardware
    from ember.planner.report import parse_bytes, parse_ints
    from ember.planner.search import SearchSpace
    from ember.train.recipes import get_recipe

    recipe = get_recipe(args.recipe)
    try:
        num_devices = int(args.num_devices)
        seq_len = int(args.seq_len) if args.seq_len else recipe.train.seq_len
        budget = parse_bytes(args.memory_budget) if args.memory_budget else 1e18
        gbs = parse_ints(args.global_batch_sizes, "--global-batch-sizes") or (
            recipe.train.batch_size * recipe.train.grad_accum,
        )
        space = SearchSpace(
            num_devices=num_devices,
            memory_budget_bytes=budget,
            global_batch_sizes=gbs,
            micro_batch_counts=parse_ints(args.micro_batches, "--micro-batches"),
            pp_degrees=parse_ints(args.pp_degrees, "--pp-degrees"),
            dp_types=tuple(v for v in args.dp_types.split(",") if v),
            schedules=tuple(v for v in args.schedules.split(",") if v),
        )
        shape = recipe.model
        if getattr(args, "analytic", False):
            model = analytic_model(
                name=recipe.name,
                num_layers=shape.num_layers,
                hidden_size=shape.hidden_size,
                intermediate_size=shape.intermediate_size,
                num_heads=shape.num_heads,
                vocab_size=recipe.train.vocab_size,
                seq_len=seq_len,
            )
            return CostModel(model, cluster_hardware(max_devices=max(num_devices, 2))), space
        spec = ProfileSpec(
            name=recipe.name,
            shape=shape,
            vocab_size=recipe.train.vocab_size,
            seq_len=seq_len,
            max_devices=int(args.profile_devices or min(num_devices, 4)),
        )
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    model, hardware = profile(
        spec, cache_dir=_cache_dir(args.cache_dir), refresh=args.refresh_profile, progress=not args.no_progress
    )
    return CostModel(model, hardware), space


def _cache_dir(text: str | None) -> Path:
    if text:
        return Path(text).expanduser()
    from ember.zoo import cache_dir

    return cache_dir() / "planner"


def run_bench_plan(args: argparse.Namespace) -> int:
    from ember.planner.bench import BENCH_MODELS, run_plan_bench

    if args.model not in BENCH_MODELS:
        raise InvalidInputError(f"--model must be one of {sorted(BENCH_MODELS)}")
    try:
        budgets = tuple(float(v) for v in args.budgets.split(","))
        num_devices, steps, rounds = int(args.num_devices), int(args.steps), int(args.rounds)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    if steps < 3 or rounds < 1 or not budgets or min(budgets) <= 0:
        raise InvalidInputError("--steps must be >= 3, --rounds >= 1, --budgets positive")
    payload = run_plan_bench(
        model=args.model,
        num_devices=num_devices,
        budget_fractions=budgets,
        steps=steps,
        rounds=rounds,
        out_dir=Path(args.out),
        refresh=args.refresh_profile,
        progress=not args.no_progress,
    )
    print(payload["markdown"])
    print(f"\nresults: {payload['json_path']}", file=sys.stderr)
    return 0
