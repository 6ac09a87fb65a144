"""Speculation on a tensor-parallel target: trees and KV commits run on every rank."""

from ember.engine.llm import LLM
from ember.core.sampling_params import SamplingParams

PROMPTS = ['"""Utilities for parsing."""\n\nimport re\n', "def fibonacci(n):"]


def test_tree_speculation_over_tensor_parallel_ranks_is_lossless():
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    want = [o.outputs[0].token_ids for o in LLM(model="ember-tiny").generate(PROMPTS, params)]
    with LLM(model="ember-tiny", tensor_parallel_size=2, speculative_models="ngram,ember-draft-b",
             speculative_expansion="2,1") as llm:  # fmt: skip
        got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]
        assert llm.engine.speculator.stats.num_accepted_tokens > 0  # KV commits happened
    assert got == want
