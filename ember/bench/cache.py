"""`ember bench cache`: AsymCache against the eviction policies peers use, side by side.

Each configuration replays the same seeded workload through an in-process engine whose KV
cache is sized so the workload's working set is several times its capacity. Sessions
(multi-turn chats, agents) submit each turn when the previous one finishes plus its gap;
sessions arrive as a Poisson process. Requests are timed on the wall clock: TTFT from
submission to the first token, TPOT over the rest."""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ember.bench.workloads import Workload, WorkloadRequest


@dataclass(frozen=True, kw_only=True)
class CacheConfig:
    name: str  # row label, e.g. "asym+adaptive"
    cache_policy: str
    chunking: str = "fixed"


DEFAULT_CONFIGS = (
    CacheConfig(name="none", cache_policy="none"),
    CacheConfig(name="lru", cache_policy="lru"),
    CacheConfig(name="lfu", cache_policy="lfu"),
    CacheConfig(name="asym", cache_policy="asym"),
    CacheConfig(name="lru+adaptive", cache_policy="lru", chunking="adaptive"),
    CacheConfig(name="asym+adaptive", cache_policy="asym", chunking="adaptive"),
)


def working_set_tokens(workload: Workload) -> int:
    """Distinct prompt tokens of the workload: the nodes of a token trie over its prompts
    (what a cache that never evicts would end up holding)."""
    root: dict = {}
    total = 0
    for request in workload.requests:
        node = root
        for token in request.prompt_token_ids:
            nxt = node.get(token)
            if nxt is None:
                nxt = node[token] = {}
                total += 1
            node = nxt
    return total


def replay(engine, workload: Workload, *, session_rate: float, seed: int) -> dict[str, Any]:
    """Run the workload through ``engine``; returns per-request timings and engine counters."""
    from ember.core.sampling_params import SamplingParams

    rng = np.random.default_rng(seed)
    sessions = workload.sessions()
    starts = (
        np.cumsum(rng.exponential(1 / session_rate, len(sessions))) if session_rate > 0 else np.zeros(len(sessions))
    )
    t0 = time.perf_counter()
    due: list[tuple[float, int, int]] = [(float(starts[i]), i, 0) for i in range(len(sessions))]
    heapq.heapify(due)
    inflight: dict[str, tuple[int, int, float, WorkloadRequest]] = {}
    records = []
    while due or inflight:
        now = time.perf_counter() - t0
        while due and due[0][0] <= now:
            _, s, turn = heapq.heappop(due)
            request = sessions[s][turn]
            params = SamplingParams(temperature=0.0, max_tokens=request.max_tokens, ignore_eos=True)
            rid = engine.add_request(None, {"prompt_token_ids": list(request.prompt_token_ids)}, params)
            inflight[rid] = (s, turn, time.perf_counter(), request)
        if not inflight:
            time.sleep(max(0.0, min(due[0][0] - now, 0.05)))
            continue
        for output in engine.step():
            if not output.finished:
                continue
            s, turn, submitted, request = inflight.pop(output.request_id)
            done = time.perf_counter()
            first = output.metrics.first_token_time
            # NOTE: metrics use time.monotonic(); convert to this clock through the deltas.
            ttft = first - output.metrics.arrival_time
            e2e = done - submitted
            n_out = len(output.outputs[0].token_ids)
            records.append(
                {
                    "ttft_s": ttft,
                    "tpot_s": (e2e - ttft) / (n_out - 1) if n_out > 1 else 0.0,
                    "e2e_s": e2e,
                    "prompt_tokens": len(request.prompt_token_ids),
                    "cached_tokens": output.num_cached_tokens,
                    "output_tokens": n_out,
                }
            )
            if turn + 1 < len(sessions[s]):
                nxt = sessions[s][turn + 1]
                heapq.heappush(due, (done - t0 + nxt.gap_s, s, turn + 1))
    makespan = time.perf_counter() - t0
    return {"records": records, "makespan_s": makespan}


def summarize(name: str, workload: str, result: dict[str, Any], engine) -> dict[str, Any]:
    records = result["records"]
    ttft = np.array([r["ttft_s"] for r in records]) * 1e3
    tpot = np.array([r["tpot_s"] for r in records if r["output_tokens"] > 1]) * 1e3
    prompt = sum(r["prompt_tokens"] for r in records)
    cached = sum(r["cached_tokens"] for r in records)
    scheduler = engine.scheduler
    return {
        "workload": workload,
        "config": name,
        "mean TTFT ms": float(ttft.mean()),
        "p99 TTFT ms": float(np.percentile(ttft, 99)),
        "mean TPOT ms": float(tpot.mean()) if len(tpot) else 0.0,
        "p99 TPOT ms": float(np.percentile(tpot, 99)) if len(tpot) else 0.0,
        "hit rate": cached / prompt if prompt else 0.0,
        "tokens run": scheduler.num_tokens_run,
        "hole tokens": scheduler.num_recomputed_hole_tokens,
        "preemptions": scheduler.num_preemptions,
        "output tok/s": sum(r["output_tokens"] for r in records) / result["makespan_s"],
    }


def bench_workloads(*, vocab_size: int, seed: int, scale: float = 1.0) -> list[Workload]:
    """(a) multi-turn chat, (b) agents on a long shared system prompt with tool gaps,
    (c) many questions over a few long shared documents."""
    from ember.bench.workloads import agent_workload, multi_turn_workload, shared_prefix_workload

    n = lambda x: max(1, round(x * scale))  # noqa: E731
    chat = multi_turn_workload(n(64), num_turns=4, input_len=96, output_len=24, vocab_size=vocab_size, seed=seed)
    agent = agent_workload(
        n(96),
        num_turns=3,
        system_len=768,
        input_len=48,
        tool_result_len=96,
        output_len=24,
        tool_latency_s=0.05,
        vocab_size=vocab_size,
        seed=seed + 1,
    )
    docs = shared_prefix_workload(
        n(64), num_groups=8, prefix_len=768, input_len=32, output_len=16, vocab_size=vocab_size, seed=seed + 2
    )
    return [chat, agent, Workload("documents", docs.requests)]


def run_cache_bench(
    model: str,
    *,
    dtype: str,
    configs=DEFAULT_CONFIGS,
    ratio: float = 3.0,
    block_size: int = 16,
    max_num_seqs: int = 4,
    session_rate: float = 0.0,
    seed: int = 0,
    scale: float = 1.0,
    log=print,
) -> dict[str, Any]:
    from ember.config import EngineConfig
    from ember.engine.llm_engine import LLMEngine
    from ember.models.loader import resolve_checkpoint_dtype
    from ember.zoo import resolve_model

    path = resolve_model(model)
    vocab = _vocab(path)
    resolved = str(resolve_checkpoint_dtype(path, dtype)).removeprefix("torch.")
    log(f"[bench cache] dtype: {resolved} (--dtype {dtype})")
    rows = []
    for workload in bench_workloads(vocab_size=vocab, seed=seed, scale=scale):
        ws = working_set_tokens(workload)
        need = max_num_seqs * -(-workload.max_seq_len // block_size) + 1
        num_blocks = max(need, round(ws / ratio / block_size))
        log(
            f"[bench cache] {workload.name}: {len(workload.requests)} requests, working set {ws} tokens, "
            f"KV capacity {num_blocks * block_size} tokens ({ws / (num_blocks * block_size):.1f}x)"
        )
        for cfg in configs:
            engine = LLMEngine(
                EngineConfig.from_kwargs(
                    path,
                    dtype=dtype,
                    block_size=block_size,
                    num_kv_blocks=num_blocks,
                    max_num_seqs=max_num_seqs,
                    cache_policy=cfg.cache_policy,
                    chunking=cfg.chunking,
                    max_model_len=workload.max_seq_len + 1,
                )
            )
            result = replay(engine, workload, session_rate=session_rate, seed=seed)
            row = summarize(cfg.name, workload.name, result, engine)
            row["capacity x"] = ws / (num_blocks * block_size)
            log(
                f"[bench cache] {workload.name} {cfg.name}: TTFT {row['mean TTFT ms']:.0f} ms, "
                f"TPOT {row['mean TPOT ms']:.1f} ms, hit {row['hit rate']:.2f}"
            )
            rows.append(row)
    return {"dtype": dtype, "resolved_dtype": resolved, "rows": rows}


def _vocab(path: str) -> int:
    import json
    from pathlib import Path

    return int(json.loads((Path(path) / "config.json").read_text())["vocab_size"])
