"""Drive an engine step by step, checking cache integrity after every step."""

from __future__ import annotations

import random

import torch

from ember.core.batch import Batch, ScheduledRequest
from ember.core.sampling_params import SamplingParams
from ember.engine.llm import LLM


def run_checked(llm: LLM, prompts, params: SamplingParams | list[SamplingParams], *, max_steps: int = 10_000):
    engine = llm.engine
    params_list = params if isinstance(params, list) else [params] * len(prompts)
    ids = [engine.add_request(None, p, sp) for p, sp in zip(prompts, params_list)]
    results = {}
    for _ in range(max_steps):
        if not engine.has_unfinished_requests():
            break
        for output in engine.step():
            if output.finished:
                results[output.request_id] = output
        engine.check_integrity()
    else:
        raise AssertionError("engine did not finish")
    # NOTE: with every request finished, no block may still be held.
    assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_blocks
    return [results[i] for i in ids]


def random_prompts(count: int, *, vocab: int, min_len: int, max_len: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(rng.randint(min_len, max_len))] for _ in range(count)]


def greedy(max_tokens: int, **kwargs) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **kwargs)


def prompt_logits_in_two_chunks(llm: LLM, prompts: list[list[int]]) -> dict[str, torch.Tensor]:
    """Every prompt's logits, its first half in one step and the rest (reading the first
    half back from the paged cache) in a second."""
    engine = llm.engine
    pool = engine.kv_cache.pool
    blocks = {i: pool.allocate(-(-len(p) // engine.config.cache.block_size)) for i, p in enumerate(prompts)}
    splits = [len(p) // 2 + 1 for p in prompts]
    out: dict[str, list[torch.Tensor]] = {}
    for first in (True, False):
        items = [
            ScheduledRequest(
                request_id=str(i),
                token_ids=p[: splits[i]] if first else p[splits[i] :],
                ranges=[(0, splits[i])] if first else [(splits[i], len(p))],
                block_ids=blocks[i],
                sample=not first,
                prompt_logits=True,
            )
            for i, p in enumerate(prompts)
            if first or splits[i] < len(p)
        ]
        result = engine.runner.run(Batch(items))
        for rid, (_, logits) in result.prompt_logits.items():
            out.setdefault(rid, []).append(logits)
        for rid, row in zip(result.sample_ids, result.logits):
            out[rid + "/sample"] = [row[None]]
    for ids in blocks.values():
        pool.free(ids)
    return {rid: torch.cat(parts) for rid, parts in out.items()}
