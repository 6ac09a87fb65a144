"""`ember bench spot-live` (registered by ``ember.bench.cli``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(kinds) -> None:
    from ember.spot.live.bench import POLICIES, SpotLiveBenchConfig

    d = SpotLiveBenchConfig()
    p = kinds.add_parser(
        "spot-live",
        help="SpotServe live on Ray: policies side by side on a compressed real trace, beside the simulator",
    )
    p.add_argument("--model", default=d.model)
    p.add_argument("--trace", default=d.trace, help="paper segment (A_S, B_S, A_S+O, B_S+O) or a trace file")
    p.add_argument("--trace-dir", default=None, help="folder of the paper segments (default: shared/data/...)")
    p.add_argument("--start", type=float, default=d.start_s, help="trace window start (trace seconds)")
    p.add_argument("--end", type=float, default=d.end_s, help="trace window end (trace seconds)")
    p.add_argument("--speedup", type=float, default=d.speedup, help="trace seconds per live second")
    p.add_argument("--grace-period", type=float, default=d.grace_period_s, help="trace seconds, notice to removal")
    p.add_argument("--policies", default=",".join(d.policies), help=f"comma list of {', '.join(POLICIES)}")
    p.add_argument("--rounds", type=int, default=d.rounds, help="every policy once per round, interleaved")
    p.add_argument("--rate", type=float, default=d.rate, help="Poisson arrivals, requests per live second")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens, help="tokens generated per request")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help="sequences per replica")
    p.add_argument("--max-tp", type=int, default=d.max_tp, help="largest tensor-parallel degree to choose")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run each Ray cluster in a loopback-only network namespace (needs root, unshare, ip)",
    )
    p.add_argument("--out", default="bench_out/spot_live", help="writes OUT.json, OUT.md, OUT.png")
    p.set_defaults(func=run_spot_live)


def run_spot_live(args: argparse.Namespace) -> int:
    from ember.bench.report import write_results
    from ember.spot.live.bench import SpotLiveBenchConfig, run_bench
    from ember.spot.live.bench_report import COLUMNS, p99_ratios, plot, table_rows

    cfg = SpotLiveBenchConfig(
        model=args.model,
        trace=args.trace,
        trace_dir=args.trace_dir,
        start_s=args.start,
        end_s=args.end,
        speedup=args.speedup,
        grace_period_s=args.grace_period,
        policies=tuple(p.strip() for p in args.policies.split(",") if p.strip()),
        rounds=args.rounds,
        rate=args.rate,
        max_tokens=args.max_tokens,
        max_batch_size=args.max_batch_size,
        max_tp=args.max_tp,
        seed=args.seed,
        isolate=args.isolate,
    )
    payload = run_bench(cfg)
    rows = table_rows(payload)
    write_results(Path(args.out), payload, rows, COLUMNS, lambda _rows, path: plot(payload, path))
    for name, ratio in p99_ratios(payload).items():
        print(f"{name}: best baseline P99 / SpotServe P99 = {ratio:.2f}x")
    return 0
