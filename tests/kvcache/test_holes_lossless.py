"""Hits with holes are lossless: evicted middle blocks are recomputed at their positions,
the cached blocks after them are reused as they are, and the output equals a cold run."""

import pytest
from engine_util import greedy, random_prompts, run_checked

from ember.engine.llm import LLM

BLOCK = 4
PROMPT = random_prompts(1, vocab=300, min_len=50, max_len=50, seed=11)[0]


@pytest.fixture(scope="module")
def path(hf_checkpoints):
    return str(hf_checkpoints("llama_gqa"))


def evict_at(llm: LLM, depths: list[int]) -> None:
    manager = llm.engine.kv_cache
    for node in list(manager.tree.nodes()):
        if node.depth in depths and node.is_evictable:
            manager.free_list.append(manager.tree.detach(node))
    manager.check_integrity(set())


def tokens_and_logprobs(output):
    completion = output.outputs[0]
    return completion.token_ids, [lp.logprob for lp in completion.logprobs]


@pytest.mark.parametrize("budget", [2048, 6])
@pytest.mark.parametrize("holes", [[2], [1, 2, 7], [0, 5, 9]])
def test_hole_hits_equal_cold_runs(path, budget, holes):
    params = greedy(12, logprobs=3)
    follow_up = PROMPT + [5, 6, 7]
    cold = LLM(path, dtype="float32", block_size=BLOCK, cache_policy="none")
    (expected,) = run_checked(cold, [follow_up], params)

    llm = LLM(path, dtype="float32", block_size=BLOCK, cache_policy="asym", max_num_batched_tokens=budget)
    run_checked(llm, [PROMPT], params)
    evict_at(llm, holes)
    recomputed_before = llm.engine.scheduler.num_recomputed_hole_tokens
    (got,) = run_checked(llm, [follow_up], params)

    assert got.outputs[0].token_ids == expected.outputs[0].token_ids
    for a, b in zip(tokens_and_logprobs(got)[1], tokens_and_logprobs(expected)[1]):
        assert a == pytest.approx(b, abs=1e-4)
    assert llm.engine.scheduler.num_recomputed_hole_tokens - recomputed_before == BLOCK * len(holes)
    # everything up to the last full block before the prompt's end was reused or recomputed
    assert got.num_cached_tokens == (len(PROMPT) // BLOCK - len(holes)) * BLOCK


def test_lru_stops_at_the_first_hole(path):
    params = greedy(4)
    llm = LLM(path, dtype="float32", block_size=BLOCK, cache_policy="lru")
    run_checked(llm, [PROMPT], params)
    evict_at(llm, [2])  # by hand: lru itself would never evict a middle block
    (got,) = run_checked(llm, [PROMPT + [1]], params)
    assert got.num_cached_tokens == 2 * BLOCK
