"""The physical KV cache of one layer.

Layout ``[num_kv_heads, num_blocks, block_size, head_dim]`` (head-major): gathering a
request's blocks along dim 1 yields, for every (request, head), one contiguous
``[num_keys, head_dim]`` slab that a batched matmul reads in place, with no transpose copy."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from ember.core.batch import KVCopy

KVCache = tuple[torch.Tensor, torch.Tensor]  # K and V


def allocate_kv_cache(
    *,
    num_layers: int,
    num_blocks: int,
    block_size: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> list[KVCache]:
    shape = (num_kv_heads, num_blocks, block_size, head_dim)
    # NOTE: zeros, not empty: a padding key still meets V in the matmul (0 * NaN = NaN).
    return [
        (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
        for _ in range(num_layers)
    ]


def write_kv(kv_cache: KVCache, slot_mapping: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Store this step's ``k``/``v`` (``[T, H_kv, D]``) at their slots."""
    for cache, new in zip(kv_cache, (k, v)):
        heads, _, _, dim = cache.shape
        cache.view(heads, -1, dim).index_copy_(1, slot_mapping, new.transpose(0, 1).to(cache.dtype))


def copy_slots(kv_caches: list[KVCache], src: torch.Tensor, dst: torch.Tensor) -> None:
    """Copy K and V of every layer from slots ``src`` to slots ``dst`` (``[n]`` long).

    All sources are read before any destination is written: the same as copying one after
    another whenever no destination is a later move's source (true of speculation's commit
    moves, ``ember.core.batch.SerializedTree.kv_commit_moves``)."""
    for cache in itertools.chain.from_iterable(kv_caches):
        heads, _, _, dim = cache.shape
        flat = cache.view(heads, -1, dim)
        flat[:, dst] = flat[:, src]


def apply_kv_copies(kv_caches: list[KVCache], copies: Sequence[KVCopy]) -> None:
    """Apply a batch's KV copies to every layer (``copy_slots``, in one go)."""
    if not copies:
        return
    device = kv_caches[0][0].device
    src = torch.tensor([c.src_slot for c in copies], dtype=torch.long, device=device)
    dst = torch.tensor([c.dst_slot for c in copies], dtype=torch.long, device=device)
    copy_slots(kv_caches, src, dst)


def read_slots(kv_caches: list[KVCache], slots: torch.Tensor) -> torch.Tensor:
    """K and V of every layer at ``slots`` (``[n]`` long) -> ``[num_layers, 2, H_kv, n, D]``."""
    return torch.stack([torch.stack([c.view(c.shape[0], -1, c.shape[-1])[:, slots] for c in kv]) for kv in kv_caches])


def write_slots(kv_caches: list[KVCache], slots: torch.Tensor, kv: torch.Tensor) -> None:
    """The inverse of ``read_slots``: store ``kv`` ``[num_layers, 2, H_kv, n, D]`` at ``slots``."""
    for layer, cache_pair in zip(kv, kv_caches, strict=True):
        for new, cache in zip(layer, cache_pair):
            cache.view(cache.shape[0], -1, cache.shape[-1])[:, slots] = new.to(cache.dtype)


def head_block_index(block_ids: torch.Tensor, num_kv_heads: int, num_blocks: int) -> torch.Tensor:
    """Rows of the cache viewed as ``[H_kv * num_blocks, block_size * D]`` that hold
    ``block_ids`` for every head, head-major: ``[H_kv * block_ids.numel()]``."""
    heads = torch.arange(num_kv_heads, device=block_ids.device)[:, None] * num_blocks
    return (heads + block_ids.reshape(1, -1)).reshape(-1)


def gather_blocks(
    cache: torch.Tensor, block_ids: torch.Tensor, *, rows: torch.Tensor | None = None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``block_ids`` ``[..., n]`` -> ``[H_kv, ..., n * block_size, D]``.

    NOTE: a dim-0 index_select over whole blocks is a run of contiguous copies, several
    times faster on CPU than indexing dim 1; ``rows`` (from ``head_block_index``) and
    ``out`` (a reusable buffer) let a step compute the index once for all layers."""
    heads, num_blocks, block_size, dim = cache.shape
    if rows is None:
        rows = head_block_index(block_ids, heads, num_blocks)
    flat = cache.view(heads * num_blocks, block_size * dim)
    if out is not None:
        gathered = torch.index_select(flat, 0, rows, out=out.view(rows.shape[0], block_size * dim))
    else:
        gathered = flat.index_select(0, rows)
    return gathered.view(heads, *block_ids.shape[:-1], block_ids.shape[-1] * block_size, dim)
