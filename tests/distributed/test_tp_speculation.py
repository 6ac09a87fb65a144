"""Speculation on a tensor-parallel target: trees and KV commits run on every rank, and a
step is one message to each rank (the commit's KV copies ride in the next step's batch)."""

from ember.core.sampling_params import SamplingParams
from ember.engine.llm import LLM

PROMPTS = ['"""Utilities for parsing."""\n\nimport re\n', "def fibonacci(n):"]


def test_tree_speculation_over_tensor_parallel_ranks_is_lossless():
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    want = [o.outputs[0].token_ids for o in LLM(model="ember-tiny").generate(PROMPTS, params)]
    with LLM(
        model="ember-tiny",
        tensor_parallel_size=2,
        speculative_models="ngram,ember-draft-b",
        speculative_expansion="2,1",
    ) as llm:
        engine = llm.engine
        steps, copies = 0, 0
        run = engine.runner.run

        def counting_run(batch):
            nonlocal steps, copies
            steps += 1
            copies += len(batch.kv_copies)
            return run(batch)

        engine.runner.run = counting_run
        got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]
        assert engine.speculator.stats.num_accepted_tokens > 0
        assert copies > 0  # accepted paths off their tree slots were moved on the ranks
        for rank_messages in engine.runner.num_messages:
            assert rank_messages == {"WorkerInit": 1, "StepRequest": steps}
    assert got == want
