"""The latency model's fit, and the adaptive budget built on it."""

import pytest
from engine_util import greedy, random_prompts, run_checked

from ember.core.request import Request
from ember.core.sampling_params import SamplingParams
from ember.engine.chunking import AdaptiveBudget
from ember.engine.llm import LLM
from ember.kvcache.cost_model import LatencyModel

TRUE = LatencyModel(fixed_s=2e-3, per_token_s=1e-4, per_pair_s=2e-8)


def test_fit_recovers_the_coefficients_from_mixed_steps():
    shapes = [[(n, c)] for n in (16, 128, 512, 1024) for c in (0, 512, 2048)]
    shapes += [[(1, c)] * b for b in (1, 32, 64) for c in (256, 1024)]
    samples = [(items, TRUE.batch_time(items)) for items in shapes]
    fit = LatencyModel.fit_batches(samples)
    assert fit.fixed_s == pytest.approx(TRUE.fixed_s, rel=1e-3)
    assert fit.per_token_s == pytest.approx(TRUE.per_token_s, rel=1e-3)
    assert fit.per_pair_s == pytest.approx(TRUE.per_pair_s, rel=1e-3)


def test_recompute_cost_grows_with_position():
    assert TRUE.recompute_cost(8192, 16) > 2 * TRUE.recompute_cost(0, 16) > 0


def make_request(rid: str, num_prompt: int, computed: int) -> Request:
    req = Request(request_id=rid, prompt_token_ids=[1] * num_prompt, sampling_params=SamplingParams())
    req.num_computed_tokens = computed
    return req


def test_budget_holds_the_target_and_shrinks_with_context():
    budget = AdaptiveBudget(model=TRUE, target_s=0.05, max_tokens=8192, min_chunk=16)
    shallow = budget([make_request("p", 9000, 0)])
    deep = budget([make_request("p", 9000, 6000)])
    assert deep < shallow
    for ctx, n in ((0, shallow), (6000, deep)):
        assert TRUE.step_time(n, ctx) <= 0.05 + 1e-9 < TRUE.step_time(n + 2, ctx)
    # decodes take their share of the step first
    decodes = [make_request(str(i), 101, 100) for i in range(100)]
    with_decodes = budget(decodes + [make_request("p", 9000, 0)])
    assert 100 < with_decodes < 100 + shallow
    # the hardware cap and the progress floor
    assert AdaptiveBudget(model=TRUE, target_s=10.0, max_tokens=512, min_chunk=16)([]) == 512
    assert AdaptiveBudget(model=TRUE, target_s=1e-6, max_tokens=512, min_chunk=16)([]) == 16


def test_adaptive_chunking_is_lossless(hf_checkpoints):
    path = str(hf_checkpoints("llama_gqa"))
    prompts = random_prompts(6, vocab=300, min_len=20, max_len=90, seed=8)
    fixed = LLM(path, dtype="float32", cache_policy="none")
    expected = [o.outputs[0].token_ids for o in run_checked(fixed, prompts, greedy(10))]
    llm = LLM(path, dtype="float32", block_size=4, chunking="adaptive", target_step_ms=0.5, max_num_batched_tokens=64)
    assert [o.outputs[0].token_ids for o in run_checked(llm, prompts, greedy(10))] == expected
