"""`ember bench cache` and `ember bench profile` (registered by ``ember.bench.cli``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parsers(kinds) -> None:
    cache = kinds.add_parser("cache", help="AsymCache vs LRU/LFU/no cache, fixed vs adaptive chunking")
    cache.add_argument("--model", default="bench-llama")
    cache.add_argument("--dtype", default="auto", help="float32 | bfloat16 | float16 | auto (default)")
    cache.add_argument("--ratio", type=float, default=3.0, help="working set / KV capacity")
    cache.add_argument("--configs", default=None, help="comma list of config names (default: all)")
    cache.add_argument("--max-num-seqs", type=int, default=4)
    cache.add_argument("--session-rate", type=float, default=0.0, help="sessions/s (0 = all at once)")
    cache.add_argument("--scale", type=float, default=1.0, help="multiply the workloads' request counts")
    cache.add_argument("--seed", type=int, default=0)
    cache.add_argument("--out", default="bench_out/cache", help="writes OUT.json, OUT.md, OUT.png")
    cache.set_defaults(func=run_cache)

    profile = kinds.add_parser("profile", help="measure and cache the step-latency model t(tokens, context)")
    profile.add_argument("--model", default="bench-llama")
    profile.add_argument("--dtype", default="auto", help="float32 | bfloat16 | float16 | auto (default)")
    profile.add_argument("--full", action="store_true", help="the full grid (default: the quick one)")
    profile.set_defaults(func=run_profile)


def run_cache(args: argparse.Namespace) -> int:
    from ember.bench.cache import DEFAULT_CONFIGS, run_cache_bench
    from ember.bench.report import write_results
    from ember.errors import InvalidInputError

    configs = DEFAULT_CONFIGS
    if args.configs:
        wanted = args.configs.split(",")
        known = {c.name: c for c in DEFAULT_CONFIGS}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise InvalidInputError(f"unknown --configs {unknown}; choose from {sorted(known)}")
        configs = tuple(known[w] for w in wanted)
    payload = run_cache_bench(
        args.model,
        dtype=args.dtype,
        configs=configs,
        ratio=args.ratio,
        max_num_seqs=args.max_num_seqs,
        session_rate=args.session_rate,
        seed=args.seed,
        scale=args.scale,
    )
    columns = [
        "workload",
        "config",
        "capacity x",
        "mean TTFT ms",
        "p99 TTFT ms",
        "mean TPOT ms",
        "p99 TPOT ms",
        "hit rate",
        "tokens run",
        "hole tokens",
        "preemptions",
        "output tok/s",
    ]
    write_results(Path(args.out), payload, payload["rows"], columns, plot_cache)
    return 0


def plot_cache(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    configs = list(dict.fromkeys(r["config"] for r in rows))
    metrics = ["mean TTFT ms", "p99 TTFT ms", "mean TPOT ms", "hit rate"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.8))
    width = 0.8 / len(configs)
    for ax, metric in zip(axes, metrics):
        for k, config in enumerate(configs):
            values = [
                next((r[metric] for r in rows if r["workload"] == w and r["config"] == config), 0) for w in workloads
            ]
            ax.bar([i + k * width for i in range(len(workloads))], values, width, label=config)
        ax.set_xticks([i + width * (len(configs) - 1) / 2 for i in range(len(workloads))], workloads)
        ax.set_title(metric)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_profile(args: argparse.Namespace) -> int:
    from ember.config import EngineConfig
    from ember.engine.llm_engine import LLMEngine
    from ember.models.loader import resolve_checkpoint_dtype
    from ember.runner.latency import profile_latency
    from ember.zoo import resolve_model

    engine = LLMEngine(EngineConfig(model=args.model, dtype=args.dtype, latency_model="analytic"))
    model = profile_latency(
        engine.runner,
        max_tokens=engine.scheduler.config.max_num_batched_tokens,
        max_context=min(engine.max_model_len, 4096),
        max_seqs=engine.scheduler.config.max_num_seqs,
        quick=not args.full,
        log=print,
    )
    print(f"dtype: {resolve_checkpoint_dtype(resolve_model(args.model), args.dtype)} (--dtype {args.dtype})")
    print(model)
    return 0
