"""The Triton multi-segment attention kernel against the reference oracle, run by Triton's
interpreter on CPU tensors (TRITON_INTERPRET=1); skipped where triton is not installed."""

import os
import random

import pytest
import torch

pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "no GPU and triton was imported before TRITON_INTERPRET=1 (tests/conftest.py sets it)", allow_module_level=True
    )

from ember.attention import allocate_kv_cache, attend, build_attention_metadata  # noqa: E402

BLOCK = 4


def multi_segment_step(rng: random.Random, num_reqs: int, num_blocks: int):
    """Requests whose queries are several segments at scattered positions (recomputed holes,
    then new tokens), plain decodes and prefills, and a token tree (the torch fallback)."""
    free = list(range(num_blocks))
    rng.shuffle(free)
    query_lens, positions, kv_lens, tables, trees = [], [], [], [], []
    for i in range(num_reqs):
        kind = "tree" if i == num_reqs - 1 else rng.choice(["decode", "prefill", "segments"])
        context = 0 if kind == "prefill" else rng.randint(8, 40)
        if kind == "segments":
            holes = sorted(rng.sample(range(context // BLOCK), k=min(2, context // BLOCK)))
            pos = [p for b in holes for p in range(b * BLOCK, (b + 1) * BLOCK)]
            pos += range(context, context + rng.randint(1, 6))
        elif kind == "decode":
            pos = [context]
        elif kind == "prefill":
            pos = list(range(rng.randint(2, 12)))
        else:
            pos = [context, context + 1, context + 1, context + 2]  # root, two children, a grandchild
        kv_len = max(pos) + 1 if kind != "tree" else context + len(pos)
        tables.append([free.pop() for _ in range(-(-kv_len // BLOCK))])
        query_lens.append(len(pos))
        positions += pos
        kv_lens.append(kv_len)
        mask = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]], dtype=torch.bool)
        trees.append(mask if kind == "tree" else None)
    storage = []
    for q_len, kv_len, pos, tree in zip(query_lens, kv_lens, _split(positions, query_lens), trees):
        storage += range(kv_len - q_len, kv_len) if tree is not None else pos
    return dict(
        query_lens=query_lens,
        positions=torch.tensor(positions),
        storage_index=torch.tensor(storage),
        kv_lens=kv_lens,
        block_tables=tables,
        block_size=BLOCK,
        tree_masks=trees,
    )


def _split(values, lengths):
    out, start = [], 0
    for n in lengths:
        out.append(values[start : start + n])
        start += n
    return out


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (4, 1)])
@pytest.mark.parametrize("head_dim", [16, 24])
def test_triton_kernel_matches_reference(seed, heads, head_dim):
    rng = random.Random(seed)
    num_heads, num_kv_heads = heads
    step = multi_segment_step(rng, 4, num_blocks=64)
    total = int(step["positions"].shape[0])
    torch.manual_seed(seed)
    q, k, v = (torch.randn(total, h, head_dim) for h in (num_heads, num_kv_heads, num_kv_heads))
    outputs = {}
    for backend in ("triton", "reference"):
        (cache,) = allocate_kv_cache(
            num_layers=1,
            num_blocks=64,
            block_size=BLOCK,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            dtype=torch.float32,
        )
        torch.manual_seed(1000 + seed)  # the same cached context (holes included) in both
        cache[0].normal_()
        cache[1].normal_()
        meta = build_attention_metadata(**step, backend=backend)
        outputs[backend] = attend(q, k, v, cache, meta, scale=head_dim**-0.5)
    torch.testing.assert_close(outputs["triton"], outputs["reference"], atol=1e-5, rtol=1e-5)


def test_engine_with_the_triton_backend_generates_what_paged_does(hf_checkpoints):
    from engine_util import greedy, random_prompts, run_checked

    from ember.engine.llm import LLM

    path = str(hf_checkpoints("llama_gqa"))
    prompts = random_prompts(2, vocab=300, min_len=5, max_len=12, seed=3)
    outs = {}
    for backend in ("paged", "triton"):
        llm = LLM(path, dtype="float32", block_size=4, attention_backend=backend, latency_model="analytic")
        outs[backend] = [o.outputs[0].token_ids for o in run_checked(llm, prompts, greedy(3))]
    assert outs["triton"] == outs["paged"]
