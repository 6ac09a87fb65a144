"""`ember bench spec` (registered by ``ember.bench.cli``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(kinds) -> None:
    spec = kinds.add_parser(
        "spec", help="SpecInfer: incremental vs draft chains, trees, merged drafts, n-gram and HF assisted generation"
    )
    spec.add_argument("--model", default="ember-tiny", help="target model")
    spec.add_argument("--hf-draft", default="ember-draft-b", help="assistant model of HF assisted generation")
    spec.add_argument("--dtype", default="float32")
    spec.add_argument("--num-prompts", type=int, default=8)
    spec.add_argument("--prompt-len", type=int, default=128)
    spec.add_argument("--output-len", type=int, default=96)
    spec.add_argument("--batch-sizes", default="1,8", help="comma list")
    spec.add_argument("--rounds", type=int, default=3, help="every system once per round; median time")
    spec.add_argument("--systems", default=None, help="comma list of system names (default: all)")
    spec.add_argument("--no-hf", action="store_true", help="skip transformers generate / assisted generation")
    spec.add_argument("--out", default="bench_out/spec", help="writes OUT.json, OUT.md, OUT.png")
    spec.set_defaults(func=run_spec)


def run_spec(args: argparse.Namespace) -> int:
    from ember.bench.report import write_results
    from ember.bench.spec import DEFAULT_SYSTEMS, SpecBenchConfig, plot_spec, run_spec_bench
    from ember.errors import InvalidInputError

    systems = dict(DEFAULT_SYSTEMS)
    if args.systems:
        wanted = [s.strip() for s in args.systems.split(",")]
        unknown = [w for w in wanted if w not in systems]
        if unknown:
            raise InvalidInputError(f"unknown --systems {unknown}; choose from {sorted(systems)}")
        systems = {"incremental": {}, **{w: systems[w] for w in wanted}}
    try:
        batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    except ValueError:
        raise InvalidInputError(f"--batch-sizes must be a comma list of integers, got {args.batch_sizes!r}") from None
    for name in ("num_prompts", "prompt_len", "output_len", "rounds"):
        if getattr(args, name) < 1:
            raise InvalidInputError(f"--{name.replace('_', '-')} must be >= 1")
    if any(b < 1 for b in batch_sizes):
        raise InvalidInputError("--batch-sizes must be positive")
    cfg = SpecBenchConfig(
        model=args.model,
        draft=args.hf_draft,
        dtype=args.dtype,
        num_prompts=args.num_prompts,
        prompt_len=args.prompt_len,
        output_len=args.output_len,
        batch_sizes=batch_sizes,
        rounds=args.rounds,
        hf=not args.no_hf,
        systems=systems,
    )
    payload = run_spec_bench(cfg)
    columns = [
        "system",
        "batch",
        "tok/s",
        "speedup",
        "tokens/step",
        "draft ms/step",
        "agreement",
        "acceptance by depth",
    ]
    write_results(Path(args.out), payload, payload["results"], columns, plot_spec)
    return 0
