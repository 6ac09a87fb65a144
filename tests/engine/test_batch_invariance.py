"""A request's greedy output does not depend on how the engine schedules it."""

import pytest
from engine_util import greedy, random_prompts, run_checked

from ember.engine.llm import LLM

PROMPTS = random_prompts(8, vocab=300, min_len=3, max_len=60, seed=3)
NUM_NEW = 24


@pytest.fixture(scope="module")
def path(hf_checkpoints):
    return str(hf_checkpoints("llama_gqa"))


@pytest.fixture(scope="module")
def reference(path):
    """Each prompt alone, whole prompt in one step, no prefix cache."""
    llm = LLM(path, dtype="float32", enable_prefix_caching=False)
    return [run_checked(llm, [p], greedy(NUM_NEW))[0].outputs[0].token_ids for p in PROMPTS]


def tokens(outputs):
    return [o.outputs[0].token_ids for o in outputs]


def test_batched_equals_alone(path, reference):
    llm = LLM(path, dtype="float32", enable_prefix_caching=False)
    assert tokens(run_checked(llm, PROMPTS, greedy(NUM_NEW))) == reference


@pytest.mark.parametrize("budget", [1, 5, 16, 61])
def test_chunked_prefill_budgets(path, reference, budget):
    llm = LLM(path, dtype="float32", block_size=4, max_num_batched_tokens=budget)
    assert tokens(run_checked(llm, PROMPTS, greedy(NUM_NEW))) == reference


def test_without_chunked_prefill(path, reference):
    llm = LLM(path, dtype="float32", enable_chunked_prefill=False, max_num_batched_tokens=32)
    assert tokens(run_checked(llm, PROMPTS, greedy(NUM_NEW))) == reference


@pytest.mark.parametrize("policy", ["asym", "lru", "lfu", "hash"])
def test_prefix_cache_hits(path, reference, policy):
    llm = LLM(path, dtype="float32", block_size=4, cache_policy=policy)
    shared = PROMPTS[0] * 3  # a long prefix that several requests share
    prompts = [shared + p for p in PROMPTS]
    first = run_checked(llm, prompts, greedy(NUM_NEW))
    second = run_checked(llm, prompts, greedy(NUM_NEW))
    assert tokens(first) == tokens(second)
    assert all(o.num_cached_tokens >= len(shared) // 4 * 4 for o in second)
    cold = LLM(path, dtype="float32", enable_prefix_caching=False)
    assert tokens(second) == tokens(run_checked(cold, prompts, greedy(NUM_NEW)))
    # a continuation of a finished request reuses its generated tokens' blocks too
    follow_up = prompts[1] + first[1].outputs[0].token_ids + [7, 8, 9]
    (hit,) = run_checked(llm, [follow_up], greedy(4))
    assert hit.num_cached_tokens >= len(prompts[1]) + NUM_NEW - 4


@pytest.mark.parametrize("policy", ["asym", "lru", "hash"])
def test_preemption_and_recompute(path, reference, policy):
    # 14 blocks of 8 tokens cannot hold 8 requests of up to 84 tokens: some are preempted.
    llm = LLM(path, dtype="float32", block_size=8, num_kv_blocks=14, cache_policy=policy)
    outputs = run_checked(llm, PROMPTS, greedy(NUM_NEW))
    assert tokens(outputs) == reference
    assert llm.engine.scheduler.num_preemptions > 0


def test_compiled_engine_matches_eager(path, reference):
    llm = LLM(path, dtype="float32", compile=True, block_size=4, max_num_batched_tokens=40)
    assert tokens(run_checked(llm, PROMPTS, greedy(NUM_NEW))) == reference


def test_eviction_pressure_with_shared_prefixes(path):
    """Many requests over a few shared prefixes in a cache far too small for them: every
    policy evicts (asym makes holes) and every output equals a cold run's."""
    import random

    rng = random.Random(5)
    prefixes = [PROMPTS[i] * 2 for i in range(3)]
    prompts = [rng.choice(prefixes) + PROMPTS[rng.randrange(8)][:5] for _ in range(12)]
    cold = LLM(path, dtype="float32", cache_policy="none")
    expected = tokens(run_checked(cold, prompts, greedy(8)))
    for policy in ("asym", "lru", "lfu", "hash"):
        llm = LLM(path, dtype="float32", block_size=4, num_kv_blocks=48, cache_policy=policy, max_num_seqs=3)
        for prompt, want in zip(prompts, expected):  # one at a time: reuse across requests
            assert tokens(run_checked(llm, [prompt], greedy(8))) == [want], policy
