"""`ember spot simulate`: replay an availability trace and request arrivals under one or all
policies; print a results table, write JSON and a latency-over-time plot."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

from ember.errors import InvalidInputError
from ember.spot.arrivals import parse_arrivals
from ember.spot.controller import POLICIES
from ember.spot.experiment import ExperimentConfig, run_experiment
from ember.spot.hardware import InstanceSpec
from ember.spot.profile import load_profile
from ember.spot.results import markdown_table
from ember.spot.traces import AvailabilityTrace, load_trace, synthetic_trace

# bytes per weight/KV value
_DTYPES = {"fp16": 2, "bf16": 2, "fp32": 4}
_SYNTHETIC_KEYS = {"initial": int, "duration": float, "lifetime": float, "gap": float, "max": int, "seed": int}


def parse_trace(spec: str) -> AvailabilityTrace:
    """A trace file (CSV, JSON lines or SkyPilot JSON), or
    `synthetic:initial=8,duration=3600,lifetime=1800,gap=300,max=12,seed=0`."""
    if not spec.startswith("synthetic:"):
        return load_trace(spec)
    values = {"initial": 8, "duration": 3600.0, "lifetime": 1800.0, "gap": 300.0, "max": 12, "seed": 0}
    for item in filter(None, spec.removeprefix("synthetic:").split(",")):
        key, _, raw = item.partition("=")
        if key not in _SYNTHETIC_KEYS:
            raise InvalidInputError(
                f"synthetic trace: unknown key {key!r} (known: {', '.join(_SYNTHETIC_KEYS)})", param="trace"
            )
        try:
            values[key] = _SYNTHETIC_KEYS[key](raw)
        except ValueError:
            raise InvalidInputError(f"synthetic trace: bad value for {key}: {raw!r}", param="trace") from None
    return synthetic_trace(
        initial=values["initial"],
        duration_s=values["duration"],
        mean_lifetime_s=values["lifetime"],
        mean_gap_s=values["gap"],
        max_instances=values["max"],
        seed=values["seed"],
    )


def _policies(raw: str) -> tuple:
    if raw == "all":
        return POLICIES
    names = tuple(p.strip() for p in raw.split(",") if p.strip())
    for p in names:
        if p not in POLICIES:
            raise InvalidInputError(f"unknown policy {p!r}; choose from {', '.join(POLICIES)} or all", param="policy")
    return names


def simulate(args: argparse.Namespace) -> int:
    trace = parse_trace(args.trace)
    arrivals = parse_arrivals(args.arrivals, duration_s=trace.end_s, prompt_len=args.prompt_len, seed=args.seed)
    profile = load_profile(args.profile)
    defaults = InstanceSpec()
    try:
        instance = replace(
            defaults,
            gpus_per_instance=args.gpus_per_instance,
            gpu_memory_gib=args.gpu_memory_gib,
            network_gbps=args.network_gbps,
            storage_gbps=args.storage_gbps,
            spot_price_per_hour=args.spot_price,
            ondemand_price_per_hour=args.ondemand_price,
        )
        config = ExperimentConfig(
            policies=_policies(args.policy),
            grace_period_s=args.grace_period,
            output_len=args.output_len,
            max_batch_size=args.max_batch_size,
            min_world_size=args.min_world_size,
            required_rate=args.required_rate,
            max_ondemand=args.max_ondemand,
            ondemand_instances=args.ondemand_instances,
            bytes_per_value=_DTYPES[args.dtype],
            host_pool=args.host_pool,
            instance=instance,
        )
    except InvalidInputError:
        raise
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    results = run_experiment(trace=trace, arrivals=arrivals, profile=profile, config=config)
    print(
        f"trace {trace.source}: {trace.end_s:.0f} s, up to {trace.max_instances} instances; "
        f"{sum(1 for a in arrivals if a.time_s < trace.end_s)} requests; profile {profile.name}"
    )
    print(markdown_table([r.summary for r in results]))
    for r in results:
        print(f"  {r.summary.policy}: simulated in {r.wall_s:.2f} s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "trace": trace.source,
        "arrivals": args.arrivals,
        "profile": str(args.profile),
        "config": {k: v for k, v in asdict(config).items() if k != "instance"} | {"instance": asdict(instance)},
        "results": [
            r.summary.as_row() | {"wall_s": round(r.wall_s, 3), "reconfigurations": r.record.reconfigurations}
            for r in results
        ],
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=str))
    from ember.spot.plot import plot_latency

    png = plot_latency(
        [r.record for r in results], out / "latency.png", title=f"{profile.name} on {Path(trace.source).name}"
    )
    print(f"wrote {out / 'results.json'} and {png}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `spot simulate` and `spot serve` to the `ember` command line."""
    spot = subparsers.add_parser("spot", help="SpotServe: serving on preemptible instances")
    sub = spot.add_subparsers(dest="spot_command", metavar="SUBCOMMAND")
    sim = sub.add_parser("simulate", help="trace-driven simulation of spot serving policies")
    d = InstanceSpec()
    sim.add_argument(
        "--trace", required=True, help="availability trace (CSV, JSON lines, SkyPilot JSON) or synthetic:k=v,..."
    )
    sim.add_argument("--arrivals", required=True, help="query CSV, poisson:RATE or gamma:RATE:CV")
    sim.add_argument("--profile", required=True, help="SpotServe latency profile JSON")
    sim.add_argument("--policy", default="all", help=f"one of {', '.join(POLICIES)}, a comma list, or all")
    sim.add_argument("--grace-period", type=float, default=30.0, help="seconds between preemption notice and removal")
    sim.add_argument("--output-len", type=int, default=128, help="tokens generated per request")
    sim.add_argument("--max-batch-size", type=int, default=4, help="largest batch a replica runs")
    sim.add_argument("--min-world-size", type=int, default=1, help="fewest GPUs per replica (SpotServe: 4/12/16)")
    sim.add_argument(
        "--required-rate", type=float, default=None, help="throughput target req/s (default: arrival rate)"
    )
    sim.add_argument("--max-ondemand", type=int, default=0, help="on-demand instances the controller may add")
    sim.add_argument("--ondemand-instances", type=int, default=None, help="fleet of the ondemand policy")
    sim.add_argument(
        "--host-pool",
        type=int,
        default=None,
        help="instances reroute fixes its (tp, pp) for (default: the trace's peak; the artifact's hostfile)",
    )
    sim.add_argument(
        "--dtype",
        choices=sorted(_DTYPES),
        default="fp16",
        help="weight/KV element type for memory and migration bytes (the SpotServe artifact serves fp32)",
    )
    sim.add_argument("--gpus-per-instance", type=int, default=d.gpus_per_instance, help="GPUs per instance")
    sim.add_argument("--gpu-memory-gib", type=float, default=d.gpu_memory_gib, help="memory per GPU")
    sim.add_argument("--network-gbps", type=float, default=d.network_gbps, help="inter-instance bandwidth")
    sim.add_argument("--storage-gbps", type=float, default=d.storage_gbps, help="checkpoint load bandwidth")
    sim.add_argument("--spot-price", type=float, default=d.spot_price_per_hour, help="$ per spot instance-hour")
    sim.add_argument(
        "--ondemand-price", type=float, default=d.ondemand_price_per_hour, help="$ per on-demand instance-hour"
    )
    sim.add_argument("--prompt-len", type=int, default=512, help="prompt tokens of generated arrivals")
    sim.add_argument("--seed", type=int, default=0, help="seed of generated arrivals")
    sim.add_argument("--out", default="spot-results", help="folder for results.json and latency.png")
    sim.set_defaults(func=simulate)
    from ember.spot.live.serve import register as register_serve

    register_serve(sub)
    spot.set_defaults(func=lambda args: (spot.print_help(), 2)[1])
