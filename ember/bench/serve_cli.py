"""`ember bench serve`: its flags, and the run over servers x workloads x request rates
(registered by ``ember.bench.cli``; the load generator itself is ``ember.bench.serving``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ember.bench.serving import SLO, LoadConfig, run_load, summarize
from ember.bench.workloads import make_workload
from ember.errors import InvalidInputError


def add_parser(kinds) -> None:
    serve = kinds.add_parser(
        "serve", help="load-test an OpenAI-compatible server (ours, started here, or any --base-url)"
    )
    target = serve.add_argument_group("target (one of)")
    target.add_argument("--base-url", help="a running server, e.g. http://127.0.0.1:8000")
    target.add_argument("--model", help="start `ember serve --model MODEL` on a free port")
    target.add_argument(
        "--server-args",
        action="append",
        default=None,
        help="extra `ember serve` flags as one value (--server-args='--no-enable-prefix-caching'); "
        "repeat to compare servers side by side",
    )
    target.add_argument("--server-threads", type=int, default=None, help="OMP_NUM_THREADS for a started server")
    target.add_argument("--served-model-name", help="model name to send (default: the first of /v1/models)")
    target.add_argument("--api-key", default=None)
    load = serve.add_argument_group("load")
    load.add_argument(
        "--workload",
        default="random",
        help="comma list of: random, shared-prefix, multi-turn, agent (default: random)",
    )
    load.add_argument("--num-requests", type=int, default=64, help="per workload and rate")
    load.add_argument("--request-rate", default="inf", help="comma list of sessions/s; inf = all at once")
    load.add_argument("--burstiness", type=float, default=1.0, help="gamma shape: 1 = Poisson, < 1 burstier")
    load.add_argument("--max-concurrency", type=int, default=None)
    load.add_argument("--seed", type=int, default=0)
    shape = serve.add_argument_group("workload shape (each kind uses the ones it has)")
    shape.add_argument("--input-len", type=int, default=None, help="new prompt tokens per request or turn")
    shape.add_argument("--output-len", type=int, default=None)
    shape.add_argument("--range-ratio", type=float, default=None, help="lengths vary by +- this fraction")
    shape.add_argument("--prefix-len", type=int, default=None, help="shared-prefix: the shared part")
    shape.add_argument("--num-groups", type=int, default=None, help="shared-prefix: distinct prefixes")
    shape.add_argument("--system-len", type=int, default=None, help="agent: the shared system prompt")
    shape.add_argument("--num-turns", type=int, default=None, help="multi-turn and agent")
    shape.add_argument("--tool-latency", type=float, default=None, help="agent: mean gap between turns (s)")
    shape.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="token ids are drawn below it (default: the model's; 1000 with --base-url)",
    )
    slo = serve.add_argument_group("goodput SLOs (ms; a request counts if it meets all that are set)")
    slo.add_argument("--slo-ttft-ms", type=float, default=None)
    slo.add_argument("--slo-tpot-ms", type=float, default=None)
    slo.add_argument("--slo-e2e-ms", type=float, default=None)
    serve.add_argument("--out", default="bench_out/serving", help="writes OUT.json, OUT.md and OUT.png")
    serve.set_defaults(func=run)


def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError:
        raise InvalidInputError(f"--request-rate must be comma-separated numbers or inf, got {text!r}") from None
    if not rates or any(r <= 0 or math.isnan(r) for r in rates):
        raise InvalidInputError(f"--request-rate values must be > 0, got {text!r}")
    return rates


def run(args: argparse.Namespace) -> int:
    from ember.bench.report import machine_info, markdown_table
    from ember.bench.serving_report import TABLE_COLUMNS, write_report

    if (args.base_url is None) == (args.model is None):
        raise InvalidInputError("give exactly one of --base-url (a running server) or --model (start one)")
    options = {
        "input_len": args.input_len,
        "output_len": args.output_len,
        "range_ratio": args.range_ratio,
        "prefix_len": args.prefix_len,
        "num_groups": args.num_groups,
        "system_len": args.system_len,
        "num_turns": args.num_turns,
        "tool_latency_s": args.tool_latency,
    }
    config = ServeBenchConfig(
        base_url=args.base_url,
        model=args.model,
        server_args=tuple(args.server_args or ("",)),
        server_threads=args.server_threads,
        served_model_name=args.served_model_name,
        api_key=args.api_key,
        workloads=tuple(w.strip() for w in args.workload.split(",") if w.strip()),
        num_requests=args.num_requests,
        request_rates=_rates(args.request_rate),
        burstiness=args.burstiness,
        max_concurrency=args.max_concurrency,
        seed=args.seed,
        vocab_size=args.vocab_size,
        workload_options={k: v for k, v in options.items() if v is not None},
        slo=SLO(ttft_ms=args.slo_ttft_ms, tpot_ms=args.slo_tpot_ms, e2e_ms=args.slo_e2e_ms),
    )
    out = Path(args.out)
    rows = run_serving_bench(config, log_dir=out.parent)
    command = "ember " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    payload = {"command": command, "machine": machine_info(), "config": _config_dict(config)}
    paths = write_report(rows, payload, out)
    print(markdown_table(rows, [c for c in TABLE_COLUMNS if any(c in r for r in rows)]))
    print("results: " + ", ".join(str(p) for p in paths))
    return 0 if all(r["failed"] == 0 for r in rows) else 1


def _config_dict(config) -> dict:
    from dataclasses import asdict

    values = asdict(config)
    values["request_rates"] = [str(r) for r in config.request_rates]
    values.pop("api_key", None)
    return values


@dataclass(frozen=True, kw_only=True)
class ServeBenchConfig:
    """`ember bench serve`: either ``base_url`` (any OpenAI-compatible server) or ``model``
    (start `ember serve` on a free port, once per entry of ``server_args``, side by side)."""

    base_url: str | None = None
    model: str | None = None
    server_args: tuple[str, ...] = ("",)
    server_threads: int | None = None
    served_model_name: str | None = None
    api_key: str | None = None
    workloads: tuple[str, ...] = ("random",)
    num_requests: int = 64
    request_rates: tuple[float, ...] = (math.inf,)
    burstiness: float = 1.0
    max_concurrency: int | None = None
    seed: int = 0
    vocab_size: int | None = None
    workload_options: dict = field(default_factory=dict)
    slo: SLO = field(default_factory=SLO)
    progress: bool = True


def run_serving_bench(config: ServeBenchConfig, log_dir) -> list[dict]:
    """One row per (server, workload, request rate). Run ``i`` of each server uses workload
    seed ``seed + i``, so no run finds its prompts cached by the one before, while the same
    run on two servers sees the same requests."""
    import shlex
    from contextlib import nullcontext
    from pathlib import Path

    from ember.server.launcher import ServerProcess

    rows = []
    servers = config.server_args if config.model else ("",)
    for index, server_args in enumerate(servers):
        if config.model:
            env = {"OMP_NUM_THREADS": str(config.server_threads)} if config.server_threads else None
            args = ["--model", config.model, "--no-access-log", *shlex.split(server_args)]
            launcher = ServerProcess(args, log_path=Path(log_dir) / f"serve-{index}.log", env=env)
        else:
            launcher = nullcontext()
        with launcher as server:
            base_url = server.url if config.model else config.base_url
            card = _first_model(base_url, config.api_key)
            model = config.served_model_name or card["id"]
            vocab_size = config.vocab_size or _vocab_size(config.model)
            _warm_up(base_url, model, config.api_key)
            run = 0
            for name in config.workloads:
                for rate in config.request_rates:
                    workload = make_workload(
                        name,
                        config.num_requests,
                        vocab_size=vocab_size,
                        seed=config.seed + run,
                        **config.workload_options,
                    )
                    if card.get("max_model_len") and workload.max_seq_len > card["max_model_len"]:
                        raise InvalidInputError(
                            f"workload {name!r} needs up to {workload.max_seq_len} tokens per request but the "
                            f"server's max_model_len is {card['max_model_len']}; shorten --input-len, "
                            "--output-len, --num-turns, --prefix-len or --system-len"
                        )
                    load = LoadConfig(
                        request_rate=rate,
                        burstiness=config.burstiness,
                        max_concurrency=config.max_concurrency,
                        seed=config.seed + run,
                    )
                    cache_before = _prefix_cache_counts(base_url)
                    results, duration = asyncio.run(
                        run_load(base_url, model, workload, load, api_key=config.api_key, progress=config.progress)
                    )
                    row = {
                        "server": server_args or "default",
                        "workload": name,
                        "request_rate": rate,
                        "requests": len(workload.requests),
                        **summarize(results, duration, config.slo),
                    }
                    cache_after = _prefix_cache_counts(base_url)
                    if cache_before and cache_after and cache_after[0] > cache_before[0]:
                        hits = cache_after[1] - cache_before[1]
                        row["prefix_hit_rate"] = hits / (cache_after[0] - cache_before[0])
                    rows.append(row)
                    run += 1
    return rows


def _first_model(base_url: str, api_key: str | None) -> dict:
    """The first model card of /v1/models (vLLM and Ember add ``max_model_len``)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    return httpx.get(f"{base_url}/v1/models", headers=headers, timeout=30).json()["data"][0]


def _vocab_size(model: str | None) -> int:
    """The checkpoint's vocabulary for a model we start; 1000 (in every real vocabulary) for a
    server we only know by URL."""
    if model is None:
        return 1000
    from pathlib import Path

    from ember.zoo import resolve_model

    config = json.loads((Path(resolve_model(model)) / "config.json").read_text())
    return int(config["vocab_size"])


def _warm_up(base_url: str, model: str, api_key: str | None) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    body = {"model": model, "prompt": [11, 12, 13], "max_tokens": 4}
    httpx.post(f"{base_url}/v1/completions", json=body, headers=headers, timeout=120).raise_for_status()


def _prefix_cache_counts(base_url: str) -> tuple[float, float] | None:
    """(queried, hit) prompt tokens from an Ember server's /metrics; None for other servers."""
    import httpx

    try:
        text = httpx.get(f"{base_url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("ember:prefix_cache_queries", "ember:prefix_cache_hits"):
            values[name] = float(value)
    if len(values) != 2:
        return None
    return values["ember:prefix_cache_queries"], values["ember:prefix_cache_hits"]
