"""Drive an engine step by step, checking cache integrity after every step."""

from __future__ import annotations

import random

from ember.engine.llm import LLM
from ember.sampling_params import SamplingParams


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
