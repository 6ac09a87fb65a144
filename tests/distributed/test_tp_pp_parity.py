"""Tensor, pipeline and both: the same greedy tokens and (fp32) logits as one process, on
tiny Llama (GQA, tied) and OPT checkpoints, with chunked prefill and batches > 1."""

import pytest
import torch
from engine_util import greedy, random_prompts, run_checked

from ember.distributed.worker import split_microbatches
from ember.engine.batch import Batch, ScheduledRequest
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


def prompt_logits_in_two_chunks(llm: LLM, prompts: list[list[int]]) -> dict[str, torch.Tensor]:
    """Every prompt's logits, its first half in one step and the rest (reading the first
    half back from the paged cache) in a second."""
    engine = llm.engine
    pool = engine.kv_cache.pool
    blocks = {i: pool.allocate(-(-len(p) // 4)) for i, p in enumerate(prompts)}
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
