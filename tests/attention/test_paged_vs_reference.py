"""The fast paged path against the reference oracle, on random steps that mix decodes,
prefill chunks over a cached prefix, and token trees (positions = context + depth)."""

import random

import pytest
import torch

from ember.attention import allocate_kv_cache, attend, build_attention_metadata

BLOCK = 4


def random_tree(rng: random.Random, size: int) -> tuple[list[int], torch.Tensor]:
    """Parents (-1 for roots) and the ancestor-or-self matrix of a random tree."""
    parents = [-1] + [rng.randrange(i) for i in range(1, size)]
    depth, mask = [0] * size, torch.eye(size, dtype=torch.bool)
    for i in range(1, size):
        depth[i] = depth[parents[i]] + 1
        mask[i] |= mask[parents[i]]
    return depth, mask


def random_step(rng: random.Random, num_reqs: int, num_blocks: int):
    free = list(range(num_blocks))
    rng.shuffle(free)
    query_lens, positions, storage, kv_lens, tables, trees = [], [], [], [], [], []
    for _ in range(num_reqs):
        kind = rng.choice(["decode", "prefill", "chunk", "tree"])
        context = 0 if kind == "prefill" else rng.randint(1, 30)
        q_len = 1 if kind == "decode" else rng.randint(2, 12)
        kv_len = context + q_len
        tables.append([free.pop() for _ in range(-(-kv_len // BLOCK))])
        query_lens.append(q_len)
        kv_lens.append(kv_len)
        if kind == "tree":
            depth, mask = random_tree(rng, q_len)
            positions += [context + d for d in depth]
            storage += range(context, kv_len)
            trees.append(mask)
        else:
            positions += range(context, kv_len)
            storage += range(context, kv_len)
            trees.append(None)
    return dict(
        query_lens=query_lens,
        positions=torch.tensor(positions),
        storage_index=torch.tensor(storage),
        kv_lens=kv_lens,
        block_tables=tables,
        block_size=BLOCK,
        tree_masks=trees,
    )


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (4, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_matches_reference(seed, heads, dtype):
    rng = random.Random(seed)
    num_heads, num_kv_heads = heads
    step = random_step(rng, rng.randint(1, 6), num_blocks=80)
    torch.manual_seed(seed)
    total = int(step["positions"].shape[0])
    q = torch.randn(total, num_heads, 16, dtype=dtype)
    k = torch.randn(total, num_kv_heads, 16, dtype=dtype)
    v = torch.randn(total, num_kv_heads, 16, dtype=dtype)
    outputs = {}
    for backend in ("paged", "reference"):
        (cache,) = allocate_kv_cache(
            num_layers=1, num_blocks=80, block_size=BLOCK, num_kv_heads=num_kv_heads, head_dim=16, dtype=dtype
        )
        torch.manual_seed(1000 + seed)  # the same earlier context in both caches
        cache[0].normal_()
        cache[1].normal_()
        meta = build_attention_metadata(**step, backend=backend)
        outputs[backend] = attend(q, k, v, cache, meta, scale=0.25)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(outputs["paged"], outputs["reference"], atol=tol, rtol=tol)


def test_reference_matches_dense_causal_attention():
    """One request, no cache reuse: the reference equals plain causal attention."""
    torch.manual_seed(0)
    q, k, v = torch.randn(9, 4, 8), torch.randn(9, 2, 8), torch.randn(9, 2, 8)
    (cache,) = allocate_kv_cache(
        num_layers=1, num_blocks=4, block_size=BLOCK, num_kv_heads=2, head_dim=8, dtype=torch.float32
    )
    meta = build_attention_metadata(
        query_lens=[9],
        positions=torch.arange(9),
        kv_lens=[9],
        block_tables=[[3, 0, 2]],
        block_size=BLOCK,
        backend="reference",
    )
    got = attend(q, k, v, cache, meta, scale=8**-0.5)
    expected = attend(q[None], k[None], v[None], None, None, scale=8**-0.5)[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_tree_queries_see_only_their_ancestors():
    """Changing a sibling branch's K/V must not change a query's output."""
    torch.manual_seed(0)
    # context of 4, then a tree: 0 -> (1, 2), 1 -> 3
    depth, tree = [0, 1, 1, 2], torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]], dtype=torch.bool)
    positions = torch.tensor([4 + d for d in depth])
    meta = build_attention_metadata(
        query_lens=[4],
        positions=positions,
        storage_index=torch.arange(4, 8),
        kv_lens=[8],
        block_tables=[[0, 1]],
        block_size=BLOCK,
        tree_masks=[tree],
    )
    q, k, v = torch.randn(4, 2, 8), torch.randn(4, 2, 8), torch.randn(4, 2, 8)
    (cache,) = allocate_kv_cache(
        num_layers=1, num_blocks=2, block_size=BLOCK, num_kv_heads=2, head_dim=8, dtype=torch.float32
    )
    base = attend(q, k, v, cache, meta, scale=0.3)
    k2, v2 = k.clone(), v.clone()
    k2[2], v2[2] = 5.0, -5.0  # node 2 is not an ancestor of nodes 0, 1, 3
    changed = attend(q, k2, v2, cache, meta, scale=0.3)
    torch.testing.assert_close(changed[[0, 1, 3]], base[[0, 1, 3]])
    assert not torch.allclose(changed[2], base[2])
