"""`ember bench spot-live`: SpotServe's policies live, side by side, on one compressed real trace.

Each policy serves the same workload (the same requests at the same times) on a local Ray
cluster while a window of a paper trace (A_S, B_S) plays time-compressed: a notice a (compressed)
grace period before each removal, the instance killed at its deadline. Rounds interleave the
policies. Per run: request latency (client send to last token) P50/P99/mean, lost requests,
outputs checked token for token against one uninterrupted engine, requests moved with KV /
recomputed / restarted / recovered, pauses, reconfigurations, cost.

Beside each live run, the simulator's prediction of it: the same compressed trace and arrivals
and the same controller, with the simulator's constants taken from that run
(``ember.spot.live.calibration``). The table and the plot are ``ember.spot.live.bench_report``'s.

Each run is a fresh process, in a loopback-only network namespace when this process can make
one (root, ``unshare``, ``ip``): Ray binds the machine's external address otherwise.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ember.errors import InvalidInputError

POLICIES = ("spotserve", "reparallelize", "reroute")
# prompts of different lengths, each made unique by its index
_PROMPTS = (
    "def fibonacci(n):",
    "import os\nimport sys\n\n\ndef main(argv):\n",
    "class Stack:\n    def __init__(self):\n",
    "for i in range(10):\n    print(i)\n",
    "# utilities for reading configuration files\nimport json\n",
    "def merge_sorted(a, b):\n    out = []\n    i = j = 0\n",
)


@dataclass(frozen=True, kw_only=True)
class SpotLiveBenchConfig:
    model: str = "ember-tiny"
    trace: str = "B_S"  # a paper segment (A_S, B_S, A_S+O, B_S+O) or a trace file
    trace_dir: str | None = None  # where the paper segments are (default: shared/data next to the repo)
    start_s: float = 0.0  # trace window, trace seconds
    end_s: float | None = 360.0
    speedup: float = 4.0  # trace seconds per live second
    grace_period_s: float = 30.0  # trace seconds (scaled by speedup live)
    policies: tuple[str, ...] = POLICIES
    rounds: int = 1
    rate: float = 0.8  # requests per live second (Poisson)
    max_tokens: int = 96
    max_batch_size: int = 8  # per replica: the engine's max_num_seqs and the optimizer's cap
    max_tp: int = 1
    seed: int = 0
    isolate: bool = True  # each run in its own loopback-only network namespace
    timeout_s: float = 1200.0  # per run

    def __post_init__(self) -> None:
        bad = [p for p in self.policies if p not in POLICIES]
        if bad or not self.policies:
            raise InvalidInputError(
                f"policies must be some of {', '.join(POLICIES)}, got {bad or 'none'}", param="policy"
            )
        for name in ("rounds", "max_tokens", "max_batch_size", "max_tp"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {getattr(self, name)}", param=name)
        for name in ("speedup", "rate", "timeout_s"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise InvalidInputError(f"{name} must be > 0, got {getattr(self, name)}", param=name)
        if self.grace_period_s < 0:
            raise InvalidInputError(f"grace_period_s must be >= 0, got {self.grace_period_s}", param="grace_period")

    def load_trace(self):
        from ember.spot.notices import PAPER_SEGMENTS, paper_segment
        from ember.spot.traces import load_trace

        if self.trace in PAPER_SEGMENTS:
            trace_dir = Path(self.trace_dir) if self.trace_dir else _default_trace_dir()
            if not trace_dir.is_dir():
                raise InvalidInputError(f"trace directory not found: {trace_dir} (give --trace-dir)", param="trace_dir")
            return paper_segment(self.trace, trace_dir)
        return load_trace(self.trace)

    def window(self):
        """The trace window on the live clock (seconds after the first fleet serves)."""
        from ember.spot.traces import window_trace

        return window_trace(self.load_trace(), start_s=self.start_s, end_s=self.end_s, speedup=self.speedup)


def _default_trace_dir() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "data" / "spotserve" / "trace" / "trace_seg"
        if candidate.is_dir():
            return candidate
    return Path("shared/data/spotserve/trace/trace_seg")


def workload(cfg: SpotLiveBenchConfig, duration_s: float) -> list:
    """Poisson arrivals at ``cfg.rate`` over ``duration_s`` live seconds; every other request
    greedy, the rest seeded sampling (so recovery must carry the sampler's RNG state)."""
    from ember.core.sampling_params import SamplingParams
    from ember.spot.live.driver import LiveRequest

    rng = np.random.default_rng(cfg.seed)
    out, t = [], float(rng.exponential(1 / cfg.rate))
    while t < duration_s:
        i = len(out)
        if i % 2 == 0:
            params = SamplingParams(temperature=0.0, max_tokens=cfg.max_tokens, ignore_eos=True)
        else:
            params = SamplingParams(
                temperature=0.9, top_p=0.95, seed=cfg.seed * 100_000 + i, max_tokens=cfg.max_tokens, ignore_eos=True
            )
        out.append(LiveRequest(f"q{i}", f"{_PROMPTS[i % len(_PROMPTS)]}# request {i}\n", params, at_s=t))
        t += float(rng.exponential(1 / cfg.rate))
    return out


# ---------------------------------------------------------------------------- one live run
def _deployment(cfg: SpotLiveBenchConfig, policy: str, input_len: int):
    from ember.spot.live.deployment import LiveDeploymentConfig

    return LiveDeploymentConfig(
        policy=policy,
        input_len=input_len,
        output_len=cfg.max_tokens,
        max_batch_size=cfg.max_batch_size,
        max_tp=cfg.max_tp,
        required_rate=cfg.rate,
    )


def _engine_options(cfg: SpotLiveBenchConfig) -> dict:
    return {"latency_model": "analytic", "max_num_seqs": cfg.max_batch_size}


def _mean_prompt_len(cfg: SpotLiveBenchConfig, requests) -> int:
    from ember.spot.live.deployment import served_model

    tokenizer = served_model(cfg.model).tokenizer
    return max(1, round(np.mean([len(tokenizer.encode(r.prompt)) for r in requests]))) if requests else 1


def run_one(cfg: SpotLiveBenchConfig, policy: str) -> dict:
    """One policy's live run, here (the caller provides the network namespace)."""
    import asyncio

    from ember.spot.live.driver import run_live
    from ember.spot.notices import TraceReplayConfig

    trace = cfg.load_trace()
    window = cfg.window()
    requests = workload(cfg, window.end_s)
    instance_ids = [f"i{k}" for k in range(window.max_instances)]
    run = asyncio.run(
        run_live(
            model=cfg.model,
            engine_options=_engine_options(cfg),
            deployment=_deployment(cfg, policy, _mean_prompt_len(cfg, requests)),
            trace=trace,
            replay=TraceReplayConfig(
                speedup=cfg.speedup, grace_period_s=cfg.grace_period_s, start_s=cfg.start_s, end_s=cfg.end_s
            ),
            instance_ids=instance_ids,
            requests=requests,
            timeout_s=cfg.timeout_s,
        )
    )
    return asdict(run)


def _isolated(argv: list[str], *, isolate: bool) -> list[str]:
    if not isolate:
        return argv
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        raise InvalidInputError(
            "spot-live runs Ray in a loopback-only network namespace, which needs root, unshare and ip; "
            "pass --no-isolate to let Ray bind this machine's address instead",
            param="isolate",
        )
    inner = " ".join(shlex.quote(a) for a in argv)
    return ["unshare", "-n", "sh", "-c", f"ip link set lo up; exec {inner}"]


def _run_subprocess(cfg: SpotLiveBenchConfig, policy: str) -> dict:
    spec = json.dumps({"config": _config_json(cfg), "policy": policy})
    argv = _isolated([sys.executable, "-m", "ember.spot.live.bench", spec], isolate=cfg.isolate)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=cfg.timeout_s + 120)
    except BaseException:
        # NOTE: interrupted or out of time: SIGTERM lets the run shut its Ray cluster down
        proc.terminate()
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"spot-live run ({policy}) failed with exit {proc.returncode}:\n{stderr[-3000:]}")
    return json.loads(lines[-1])


def _config_json(cfg: SpotLiveBenchConfig) -> dict:
    return asdict(cfg) | {"policies": list(cfg.policies)}


# ---------------------------------------------------------------------------- analysis
def oracle_outputs(cfg: SpotLiveBenchConfig, requests) -> dict[str, list[list[int]]]:
    """Every request's tokens from one engine that nothing interrupts."""
    from ember.engine.llm import LLM

    with LLM(model=cfg.model, **_engine_options(cfg)) as llm:
        outputs = llm.generate([r.prompt for r in requests], [r.params for r in requests], use_tqdm=False)
    return {r.request_id: [c.token_ids for c in o.outputs] for r, o in zip(requests, outputs)}


def _pct(values, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def live_summary(run: dict, requests, oracle: dict) -> dict:
    lat = [run["latency_s"][r.request_id] for r in requests if r.request_id in run["latency_s"]]
    pauses = run["router"]["pauses_s"]
    wrong = [rid for rid, toks in run["token_ids"].items() if toks != oracle.get(rid)]
    serving = run["serving_at_s"]
    return {
        "requests": len(requests),
        "done": len(lat),
        "lost": len(requests) - len(lat),
        "wrong outputs": len(wrong),
        "mean s": float(np.mean(lat)) if lat else float("nan"),
        "P50 s": _pct(lat, 50),
        "P99 s": _pct(lat, 99),
        "with KV": run["router"]["num_migrated"],
        "recomputed": run["router"]["num_recomputed"],
        "restarted": run["router"]["num_restarted"],
        "recovered": run["router"]["num_recovered"],
        "KV MiB": run["router"]["migrated_kv_bytes"] / 2**20,
        "pause P50 s": _pct(pauses, 50),
        "pause P99 s": _pct(pauses, 99),
        "reconf": sum(1 for d in run["decisions"] if d["time_s"] >= serving - 1e-6),
        "configs": [d["config"] or "none" for d in run["decisions"]],
    }


def simulate_run(cfg: SpotLiveBenchConfig, policy: str, requests, input_len: int, calib: dict) -> dict:
    """The simulator on the same compressed trace and arrivals, calibrated by ``calib``."""
    from ember.kvcache.cost_model import LatencyModel
    from ember.spot.arrivals import Arrival
    from ember.spot.live.deployment import build_controller, live_profile, served_model
    from ember.spot.results import summarize
    from ember.spot.simulator import SimulationConfig, Simulator

    served = served_model(cfg.model)
    tokenizer = served.tokenizer
    window = cfg.window()
    deployment = replace(
        _deployment(cfg, policy, input_len),
        switch_overhead_s=calib["switch_overhead_s"],
        restart_overhead_s=calib["restart_overhead_s"],
    )
    # NOTE: the controller decides with the model the live controller used (so both choose the
    # same configurations); the simulated replicas run at the speed the live replicas measured.
    controller = build_controller(
        deployment,
        served.arch,
        served.latency,
        bytes_per_value=served.dtype.itemsize,
        pool_instances=window.max_instances,
    )
    measured = LatencyModel(**calib["latency"]) if calib["latency"] else served.latency
    profile = live_profile(served.arch, measured, input_len=input_len, max_tp=cfg.max_tp)
    arrivals = [
        Arrival(request_id=k, time_s=r.at_s, prompt_len=max(1, len(tokenizer.encode(r.prompt))))
        for k, r in enumerate(requests)
    ]
    sim_cfg = SimulationConfig(
        grace_period_s=cfg.grace_period_s / cfg.speedup,
        output_len=cfg.max_tokens,
        max_batch_size=cfg.max_batch_size,
        required_rate=cfg.rate,
        shared_cores=calib["cores"] if calib["latency"] else None,
    )
    # NOTE: the trace's end is the arrivals' end; the simulator keeps serving until all are done
    record = Simulator(trace=window, arrivals=arrivals, controller=controller, profile=profile, config=sim_cfg).run()
    s = summarize(record, spot_price_per_hour=0.0, ondemand_price_per_hour=0.0)
    return {
        "done": s.num_completed,
        "lost": s.num_lost,
        "mean s": s.latency_mean_s,
        "P50 s": s.latency_p50_s,
        "P99 s": s.latency_p99_s,
        "reconf": s.num_reconfigurations,
        "configs": [c for _, c, *_ in record.reconfigurations],
        "arrival_s": record.arrival_s,
        "latency_s": record.latency_s,
    }


def trace_cost(cfg: SpotLiveBenchConfig) -> float:
    """Spot dollars of the window, in trace time, at the artifact's price: the instances the
    trace gives are paid whatever a policy does with them."""
    from ember.spot.hardware import InstanceSpec

    window = cfg.window()
    seconds = sum(b - a for a, b in window.lifetimes().values()) * cfg.speedup
    return seconds / 3600 * InstanceSpec().spot_price_per_hour


# ---------------------------------------------------------------------------- the benchmark
def run_bench(cfg: SpotLiveBenchConfig, *, progress=print) -> dict:
    from ember.spot.live.calibration import calibration

    window = cfg.window()
    requests = workload(cfg, window.end_s)
    if not requests:
        raise InvalidInputError("no request arrives in the window; raise --rate or widen the window", param="rate")
    input_len = _mean_prompt_len(cfg, requests)
    progress(
        f"spot-live: {window.source}: {window.end_s:.0f} live s, up to {window.max_instances} instances, "
        f"{len(requests)} requests x {cfg.max_tokens} tokens; policies {', '.join(cfg.policies)}, {cfg.rounds} round(s)"
    )
    oracle = oracle_outputs(cfg, requests)
    runs = []
    for k in range(cfg.rounds):
        order = cfg.policies[k % len(cfg.policies) :] + cfg.policies[: k % len(cfg.policies)]  # interleaved
        for policy in order:
            start = time.monotonic()
            run = _run_subprocess(cfg, policy)
            live = live_summary(run, requests, oracle)
            calib = calibration(run)
            sim = simulate_run(cfg, policy, requests, input_len, calib)
            load = os.getloadavg()[0]
            runs.append({
                "round": k, "policy": policy, "live": live, "sim": sim, "calibration": calib,
                "load_avg_1m": load, "wall_s": time.monotonic() - start,
                "latency": {r.request_id: run["latency_s"].get(r.request_id) for r in requests},
                "decisions": run["decisions"], "serving_at_s": run["serving_at_s"], "failed": run["failed"],
            })  # fmt: skip
            progress(
                f"  round {k + 1} {policy}: P50 {live['P50 s']:.2f}s P99 {live['P99 s']:.2f}s lost {live['lost']} "
                f"wrong {live['wrong outputs']} (simulated P99 {sim['P99 s']:.2f}s) in {runs[-1]['wall_s']:.0f}s, "
                f"load {load:.1f}"
            )
    return {
        "config": _config_json(cfg),
        "window": window.source,
        "arrival_s": [r.at_s for r in requests],
        "cost_usd": trace_cost(cfg),
        "runs": runs,
    }


def main(argv: list[str]) -> None:
    """One run in this process (``python -m ember.spot.live.bench SPEC``): prints it as JSON."""
    import signal

    # NOTE: SIGTERM unwinds (the run's finally shuts its Ray cluster down) instead of killing
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(143)))
    spec = json.loads(argv[1])
    raw = spec["config"]
    cfg = SpotLiveBenchConfig(**raw | {"policies": tuple(raw["policies"])})
    print(json.dumps(run_one(cfg, spec["policy"])), flush=True)


if __name__ == "__main__":
    main(sys.argv)
