"""Per-step attention metadata: the one attention contract turned into tensors.

A step runs ``T`` tokens that belong to several requests, concatenated request by request.
Request ``i`` owns a *storage* of KV slots addressed through its block table; storage index
``s`` lives in slot ``block_table[s // block_size] * block_size + s % block_size`` of the
layer's cache. Its keys this step are storage ``[0, kv_len)``; each key has a position
(its storage index, except for tree tokens, whose position is context length + depth).

    visible(q, k) = pos(k) <= pos(q)  and  (k is not a tree token of this step
                                            or k is q or an ancestor of q)

The metadata keeps that raw description per request (``spans``, which the reference path
reads) and, built once per step and shared by every layer, what the fast path needs:
one batched table for single-token decodes and a ready visibility mask per other request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class RequestSpan:
    """One request's part of the step: queries ``[query_start, query_end)`` of the step."""

    query_start: int
    query_end: int
    block_ids: torch.Tensor  # [num_blocks] long, covers storage [0, kv_len)
    kv_len: int
    key_positions: torch.Tensor  # [kv_len] long
    tree_mask: torch.Tensor | None  # [Q, Q] ancestor-or-self among tree tokens, or None
    mask: torch.Tensor | None  # [Q, kv_len] bool visibility (fast path); None for decodes

    @property
    def num_queries(self) -> int:
        return self.query_end - self.query_start


@dataclass(frozen=True)
class DecodeBatch:
    """Requests with a single ordinary query: they see exactly storage ``[0, kv_len)``."""

    query_rows: torch.Tensor  # [B] long: row of each query in the step
    block_table: torch.Tensor  # [B, max_blocks] long, padded with the request's first block
    key_valid: torch.Tensor  # [B, max_blocks * block_size] bool
    # Per-step scratch shared by the layers (gather index and buffers); never crosses steps.
    workspace: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class AttentionMetadata:
    positions: torch.Tensor  # [T] long
    slot_mapping: torch.Tensor  # [T] long: cache slot each step token's K/V is written to
    block_size: int
    spans: tuple[RequestSpan, ...]  # every request, in step order
    decode: DecodeBatch | None  # the single-query requests, batched
    prefill_spans: tuple[RequestSpan, ...]  # the other requests
    backend: str = "paged"  # "paged" (fast) or "reference" (the oracle)
    compiled: bool = False  # paged decodes through the torch.compile'd fused kernel

    @property
    def num_tokens(self) -> int:
        return int(self.positions.shape[0])


def build_attention_metadata(
    *,
    query_lens: Sequence[int],
    positions: torch.Tensor,
    kv_lens: Sequence[int],
    block_tables: Sequence[Sequence[int]],
    block_size: int,
    storage_index: torch.Tensor | None = None,
    tree_masks: Sequence[torch.Tensor | None] | None = None,
    device: torch.device | str = "cpu",
    backend: str = "paged",
    compiled: bool = False,
) -> AttentionMetadata:
    """Build the step's metadata.

    Args:
        query_lens: tokens run this step, per request.
        positions: ``[T]`` absolute position of each step token (for RoPE and visibility).
        kv_lens: keys per request: storage ``[0, kv_len)``, this step's tokens included.
        block_tables: block ids per request, covering at least ``kv_len`` storage slots.
        storage_index: ``[T]`` storage index of each step token; defaults to its position.
        tree_masks: per request, ``None`` or a ``[Q_i, Q_i]`` bool ancestor-or-self matrix for
            tree tokens, which then occupy storage ``[kv_len - Q_i, kv_len)``.
    """
    positions = positions.to(device=device, dtype=torch.long)
    storage = positions if storage_index is None else storage_index.to(device, torch.long)
    tables = [torch.as_tensor(list(t), dtype=torch.long, device=device) for t in block_tables]

    spans, slot_parts, start = [], [], 0
    for i, q_len in enumerate(query_lens):
        end = start + q_len
        tree = tree_masks[i] if tree_masks is not None else None
        s = storage[start:end]
        slot_parts.append(tables[i][s // block_size] * block_size + s % block_size)
        is_decode = q_len == 1 and tree is None
        spans.append(_span(start, end, tables[i], kv_lens[i], positions, tree, with_mask=not is_decode, device=device))
        start = end
    slot_mapping = torch.cat(slot_parts) if slot_parts else positions.new_empty(0)

    decodes = [s for s in spans if s.mask is None]
    return AttentionMetadata(
        positions=positions,
        slot_mapping=slot_mapping,
        block_size=block_size,
        spans=tuple(spans),
        decode=_decode_batch(decodes, block_size, device) if decodes else None,
        prefill_spans=tuple(s for s in spans if s.mask is not None),
        backend=backend,
        compiled=compiled,
    )


def _span(start, end, table, kv_len, positions, tree, *, with_mask: bool, device) -> RequestSpan:
    q_len = end - start
    key_positions = torch.arange(kv_len, device=device)
    if tree is not None:
        tree = tree.to(device=device, dtype=torch.bool)
        key_positions[kv_len - q_len :] = positions[start:end]
    mask = None
    if with_mask:
        mask = key_positions[None, :] <= positions[start:end, None]
        if tree is not None:
            mask[:, kv_len - q_len :] &= tree
    return RequestSpan(start, end, table, kv_len, key_positions, tree, mask)


def _decode_batch(spans: list[RequestSpan], block_size: int, device) -> DecodeBatch:
    max_blocks = max(-(-s.kv_len // block_size) for s in spans)
    table = torch.empty(len(spans), max_blocks, dtype=torch.long, device=device)
    for row, span in enumerate(spans):
        n = -(-span.kv_len // block_size)
        table[row, :n] = span.block_ids[:n]
        # NOTE: padding reads the request's own first block, never a slot of unknown
        # content: masked keys still meet V in the matmul, and 0 * NaN = NaN.
        table[row, n:] = span.block_ids[0]
    kv_lens = torch.as_tensor([s.kv_len for s in spans], device=device)
    key_valid = torch.arange(max_blocks * block_size, device=device)[None, :] < kv_lens[:, None]
    rows = torch.as_tensor([s.query_start for s in spans], dtype=torch.long, device=device)
    return DecodeBatch(query_rows=rows, block_table=table, key_valid=key_valid)
