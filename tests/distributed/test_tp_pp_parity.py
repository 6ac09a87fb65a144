"""Tensor, pipeline and both: the same greedy tokens and (fp32) logits as one process, on
tiny Llama (GQA, tied) and OPT checkpoints, with chunked prefill and batches > 1."""

import pytest
import torch
from engine_util import greedy, prompt_logits_in_two_chunks, random_prompts, run_checked

from ember.core.batch import ScheduledRequest
from ember.distributed.worker import split_microbatches
from ember.engine.llm import LLM

NUM_NEW = 6
OPTIONS = dict(dtype="float32", block_size=4, max_num_batched_tokens=16, latency_model="analytic", cache_policy="hash")
CASES = [
    ("llama_gqa", 2, 1),
    ("llama_gqa", 1, 2),
    ("llama_gqa", 2, 2),
    ("llama_tied", 2, 1),
    ("opt_post_ln_proj", 2, 2),
    ("opt_pre_ln", 1, 2),
]


@pytest.fixture(scope="module")
def reference(hf_checkpoints):
    cache = {}

    def get(variant: str, prompts) -> tuple[list[list[int]], dict]:
        if variant not in cache:
            llm = LLM(str(hf_checkpoints(variant)), **OPTIONS)
            tokens = [o.outputs[0].token_ids for o in run_checked(llm, prompts, greedy(NUM_NEW))]
            cache[variant] = tokens, prompt_logits_in_two_chunks(llm, prompts)
        return cache[variant]

    return get


@pytest.mark.parametrize("variant,tp,pp", CASES, ids=[f"{v}-tp{t}-pp{p}" for v, t, p in CASES])
def test_distributed_matches_single_process(variant, tp, pp, hf_checkpoints, reference):
    prompts = random_prompts(5, vocab=300, min_len=2, max_len=30, seed=3)
    ref_tokens, ref_logits = reference(variant, prompts)
    with LLM(str(hf_checkpoints(variant)), tensor_parallel_size=tp, pipeline_parallel_size=pp, **OPTIONS) as llm:
        executor = llm.engine.runner
        assert len(executor.worker_pids) == tp * pp
        tokens = [o.outputs[0].token_ids for o in run_checked(llm, prompts, greedy(NUM_NEW))]
        logits = prompt_logits_in_two_chunks(llm, prompts)
    assert tokens == ref_tokens
    assert logits.keys() == ref_logits.keys()
    for rid, expected in ref_logits.items():
        torch.testing.assert_close(logits[rid], expected, rtol=1e-4, atol=1e-4, msg=rid)
    # a clean close: every rank left the process group and exited 0
    assert [p.returncode for p in executor._procs] == [0] * (tp * pp)


def _item(rid: str, n: int) -> ScheduledRequest:
    return ScheduledRequest(rid, [1] * n, [(0, n)], [0], sample=True)


@pytest.mark.parametrize("sizes,count", [([5, 1, 1, 5], 2), ([1, 1, 1], 4), ([3], 2), ([2, 2, 2, 2, 2], 3), ([], 2)])
def test_microbatches_are_contiguous_nonempty_and_balanced(sizes, count):
    items = [_item(str(i), n) for i, n in enumerate(sizes)]
    groups = split_microbatches(items, count)
    assert [r for g in groups for r in g] == items
    assert len(groups) == min(count, len(items)) and all(groups)
    if sizes == [5, 1, 1, 5]:
        assert [len(g) for g in groups] == [2, 2]
