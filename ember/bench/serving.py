"""Load generator for any OpenAI-compatible server: replays a workload (``ember.bench.workloads``)
against /v1/completions with streaming, and reports latency percentiles, throughput and goodput.

Per request, measured at the client from the moment the request is sent:

    TTFT  first streamed token           E2E   last byte of the response
    ITL   gaps between streamed chunks   TPOT  (E2E - TTFT) / (output tokens - 1)

Sessions start on the arrival process (Poisson for burstiness 1; gamma with shape
``burstiness`` otherwise: < 1 burstier, > 1 more regular); a session's later turns are sent
``gap_s`` after its previous turn finished. ``max_concurrency`` caps requests in flight.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import dataclass, field

import numpy as np

from ember.bench.workloads import Workload, WorkloadRequest


@dataclass(frozen=True, kw_only=True)
class LoadConfig:
    request_rate: float = math.inf  # sessions started per second; inf: all at once
    burstiness: float = 1.0
    max_concurrency: int | None = None
    seed: int = 0
    timeout_s: float = 600.0
    temperature: float = 0.0


@dataclass(frozen=True, kw_only=True)
class SLO:
    """Goodput counts requests that meet every bound that is set (milliseconds)."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    def met(self, result: RequestResult) -> bool:
        checks = ((self.ttft_ms, result.ttft_s), (self.tpot_ms, result.tpot_s), (self.e2e_ms, result.e2e_s))
        return result.ok and all(bound is None or value * 1000 <= bound for bound, value in checks)


@dataclass
class RequestResult:
    request_id: str
    num_prompt_tokens: int
    ok: bool = False
    error: str | None = None
    num_output_tokens: int = 0
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)

    @property
    def tpot_s(self) -> float:
        return (self.e2e_s - self.ttft_s) / (self.num_output_tokens - 1) if self.num_output_tokens > 1 else 0.0


def arrival_times(num: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Start times (s) of ``num`` sessions: gamma inter-arrivals with mean 1 / rate."""
    if math.isinf(rate):
        return [0.0] * num
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=num)
    return np.cumsum(gaps).tolist()


async def send_request(client, url: str, model: str, request: WorkloadRequest, load: LoadConfig) -> RequestResult:
    result = RequestResult(request.request_id, len(request.prompt_token_ids))
    body = {
        "model": model,
        "prompt": list(request.prompt_token_ids),
        "max_tokens": request.max_tokens,
        "temperature": load.temperature,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    last = None
    try:
        async with client.stream("POST", url, json=body, timeout=load.timeout_s) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    result.ok = result.error is None
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    result.error = chunk["error"].get("message", "error event")
                elif chunk.get("choices"):
                    now = time.perf_counter()
                    if last is None:
                        result.ttft_s = now - start
                    else:
                        result.itl_s.append(now - last)
                    last = now
                if chunk.get("usage"):
                    result.num_output_tokens = chunk["usage"]["completion_tokens"]
        result.e2e_s = time.perf_counter() - start
    except Exception as exc:  # a load generator reports failures, it does not stop on them
        result.error = repr(exc)
    return result


async def run_load(
    base_url: str,
    model: str,
    workload: Workload,
    load: LoadConfig,
    *,
    api_key: str | None = None,
    progress: bool = True,
) -> tuple[list[RequestResult], float]:
    """Replay ``workload``; returns every request's result and the wall time (s)."""
    import httpx
    from tqdm.auto import tqdm

    sessions = workload.sessions()
    random.Random(load.seed).shuffle(sessions)
    starts = arrival_times(len(sessions), load.request_rate, load.burstiness, load.seed)
    limit = asyncio.Semaphore(load.max_concurrency) if load.max_concurrency else None
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    url = base_url.rstrip("/") + "/v1/completions"
    results: list[RequestResult] = []
    bar = tqdm(
        total=len(workload.requests),
        desc=f"{workload.name} @ {load.request_rate} req/s",
        unit="req",
        disable=not progress,
    )
    pool = httpx.Limits(max_connections=load.max_concurrency or 1000, max_keepalive_connections=100)
    async with httpx.AsyncClient(headers=headers, limits=pool, timeout=load.timeout_s) as client:
        t0 = time.perf_counter()

        async def session(turns: list[WorkloadRequest], start: float) -> None:
            await asyncio.sleep(max(0.0, t0 + start - time.perf_counter()))
            for request in turns:
                if request.gap_s:
                    await asyncio.sleep(request.gap_s)
                if limit is None:
                    result = await send_request(client, url, model, request, load)
                else:
                    async with limit:
                        result = await send_request(client, url, model, request, load)
                results.append(result)
                bar.update(1)

        await asyncio.gather(*(session(s, t) for s, t in zip(sessions, starts)))
        duration = time.perf_counter() - t0
    bar.close()
    return results, duration


def _stats_ms(values: list[float], name: str) -> dict[str, float]:
    if not values:
        return {f"mean_{name}_ms": 0.0, f"p50_{name}_ms": 0.0, f"p90_{name}_ms": 0.0, f"p99_{name}_ms": 0.0}
    ms = np.asarray(values) * 1000
    return {
        f"mean_{name}_ms": float(ms.mean()),
        **{f"p{q}_{name}_ms": float(np.percentile(ms, q)) for q in (50, 90, 99)},
    }


def summarize(results: list[RequestResult], duration_s: float, slo: SLO) -> dict[str, float]:
    done = [r for r in results if r.ok]
    num_output = sum(r.num_output_tokens for r in done)
    num_prompt = sum(r.num_prompt_tokens for r in done)
    summary = {
        "completed": len(done),
        "failed": len(results) - len(done),
        "duration_s": duration_s,
        "request_throughput": len(done) / duration_s,
        "output_throughput": num_output / duration_s,
        "total_token_throughput": (num_prompt + num_output) / duration_s,
        "goodput": sum(slo.met(r) for r in done) / duration_s,
    }
    summary |= _stats_ms([r.ttft_s for r in done], "ttft")
    summary |= _stats_ms([r.tpot_s for r in done if r.num_output_tokens > 1], "tpot")
    summary |= _stats_ms([gap for r in done for gap in r.itl_s], "itl")
    summary |= _stats_ms([r.e2e_s for r in done], "e2e")
    errors = sorted({r.error for r in results if r.error})
    if errors:
        summary["errors"] = errors[:5]
    return summary
