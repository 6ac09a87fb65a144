"""`ember bench ...` subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks (results side by side in one run)")
    kinds = bench.add_subparsers(dest="bench_kind", metavar="KIND", required=True)
    offline = kinds.add_parser("offline", help="Ember vs transformers.generate on one checkpoint")
    offline.add_argument("--model", default=None, help="checkpoint (default: a random ~46M Llama)")
    offline.add_argument(
        "--dtype",
        default="auto",
        help="float32 | bfloat16 | float16 | auto (default: bf16 only on hardware with native bf16)",
    )
    offline.add_argument("--num-prompts", type=int, default=64)
    offline.add_argument("--min-prompt-len", type=int, default=32)
    offline.add_argument("--max-prompt-len", type=int, default=384)
    offline.add_argument("--output-len", type=int, default=128)
    offline.add_argument("--batch1-prompt-len", type=int, default=64)
    offline.add_argument("--seed", type=int, default=0)
    offline.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run Ember with --compile (torch.compile)",
    )
    offline.add_argument("--device", default="cpu", help="torch device for every system (cuda: rank r uses cuda:r)")
    offline.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=1,
        help="> 1: also run Ember tensor-parallel (worker processes), side by side",
    )
    offline.add_argument(
        "--pipeline-parallel-size", type=int, default=1, help="> 1: also run Ember pipeline-parallel, side by side"
    )
    offline.add_argument("--out", default="bench_out/offline.json", help="JSON results file")
    offline.set_defaults(func=run_offline)

    from ember.bench import cache_cli, serve_cli, spec_cli, spot_live_cli

    serve_cli.add_parser(kinds)
    cache_cli.add_parsers(kinds)
    spec_cli.add_parser(kinds)
    spot_live_cli.add_parser(kinds)
    from ember.planner.cli import add_bench_parser

    add_bench_parser(kinds)


def run_offline(args: argparse.Namespace) -> int:
    from ember.bench.offline import OfflineBenchConfig, run_offline_bench
    from ember.bench.report import machine_info, markdown_table, write_json

    cfg = OfflineBenchConfig(
        model=args.model,
        dtype=args.dtype,
        num_prompts=args.num_prompts,
        min_prompt_len=args.min_prompt_len,
        max_prompt_len=args.max_prompt_len,
        output_len=args.output_len,
        batch1_prompt_len=args.batch1_prompt_len,
        seed=args.seed,
        compile=args.compile,
        device=args.device,
        tensor_parallel_size=args.tensor_parallel_size,
        pipeline_parallel_size=args.pipeline_parallel_size,
    )
    payload = run_offline_bench(cfg)
    payload["machine"] = machine_info()
    systems = ["ember"] + (["ember-compiled"] if cfg.compile else []) + [n for n in [cfg.distributed_name] if n]
    columns = ["workload", "prompts", "new tokens each", "hf tok/s"]
    for system in systems:
        columns += [f"{system} tok/s", f"{system} / hf", f"{system} agreement"]
    print(f"dtype: {payload['config']['resolved_dtype']} (--dtype {cfg.dtype})")
    print(markdown_table(payload["results"], columns))
    print(f"results: {write_json(Path(args.out), payload)}")
    return 0
