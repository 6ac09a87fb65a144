"""Per-step attention metadata: the one attention contract turned into tensors.

A step runs ``T`` tokens that belong to ``B`` requests, concatenated request by request.
Request ``i`` owns a *storage* of KV slots addressed through its block table; storage index
``s`` lives in cache slot ``block_table[s // block_size] * block_size + s % block_size``.
Its keys this step are storage ``[0, kv_len_i)``; each key has a position (equal to its
storage index, except for tree tokens, whose position is context length + depth).

    visible(q, k) = pos(k) <= pos(q)  and  (k is not a tree token of this step
                                            or k is q or an ancestor of q)

Requests are split into groups by query length (decodes vs. the rest) so that one long
prefill chunk does not pad every decode in the batch to its length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class AttentionGroup:
    """Requests attended together, padded to ``[B, Q]`` queries and ``[B, L]`` keys."""

    query_index: torch.Tensor  # [B, Q] long: row of each query in the step's T tokens
    query_valid: torch.Tensor  # [B, Q] bool
    key_slots: torch.Tensor  # [B, L] long: cache slot of each key
    mask: torch.Tensor  # [B, 1, Q, L] bool: visible(q, k)


@dataclass(frozen=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] long: cache slot each step token's K/V is written to
    groups: tuple[AttentionGroup, ...]
    num_tokens: int


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
    num_reqs = len(query_lens)
    num_tokens = int(sum(query_lens))
    positions = positions.to(device=device, dtype=torch.long)
    storage = positions if storage_index is None else storage_index.to(device, torch.long)

    starts = [0] * num_reqs
    for i in range(1, num_reqs):
        starts[i] = starts[i - 1] + query_lens[i - 1]
    max_blocks = max(1, max(len(t) for t in block_tables))
    table = torch.zeros(num_reqs, max_blocks, dtype=torch.long)
    for i, blocks in enumerate(block_tables):
        table[i, : len(blocks)] = torch.as_tensor(blocks, dtype=torch.long)
    table = table.to(device)

    req_of_token = torch.repeat_interleave(
        torch.arange(num_reqs, device=device), torch.as_tensor(query_lens, device=device)
    )
    slot_mapping = table[req_of_token, storage // block_size] * block_size + storage % block_size

    decode = [i for i in range(num_reqs) if query_lens[i] == 1 and not _has_tree(tree_masks, i)]
    decode_set = set(decode)
    rest = [i for i in range(num_reqs) if i not in decode_set]
    groups = tuple(
        _build_group(
            idx, starts, query_lens, kv_lens, table, positions, block_size, tree_masks, device
        )
        for idx in (decode, rest)
        if idx
    )
    return AttentionMetadata(slot_mapping=slot_mapping, groups=groups, num_tokens=num_tokens)


def _has_tree(tree_masks, i: int) -> bool:
    return tree_masks is not None and tree_masks[i] is not None


def _build_group(
    idx: list[int],
    starts: list[int],
    query_lens: Sequence[int],
    kv_lens: Sequence[int],
    table: torch.Tensor,
    positions: torch.Tensor,
    block_size: int,
    tree_masks,
    device,
) -> AttentionGroup:
    q_lens = torch.as_tensor([query_lens[i] for i in idx], device=device)
    k_lens = torch.as_tensor([kv_lens[i] for i in idx], device=device)
    q_max, k_max = int(q_lens.max()), int(k_lens.max())
    q_start = torch.as_tensor([starts[i] for i in idx], device=device)

    q_arange = torch.arange(q_max, device=device)
    query_valid = q_arange[None, :] < q_lens[:, None]
    query_index = torch.where(query_valid, q_start[:, None] + q_arange[None, :], 0)
    q_pos = positions[query_index]

    k_storage = torch.arange(k_max, device=device).expand(len(idx), k_max)
    key_valid = k_storage < k_lens[:, None]
    sub_table = table[torch.as_tensor(idx, device=device)]
    block_col = torch.clamp(k_storage // block_size, max=sub_table.shape[1] - 1)
    key_slots = sub_table.gather(1, block_col) * block_size + k_storage % block_size
    # NOTE: padding keys read the request's first key, never a slot of unknown content:
    # masked keys still meet V in the matmul, and 0 * NaN = NaN.
    key_slots = torch.where(key_valid, key_slots, key_slots[:, :1])
    key_pos = k_storage.clone()

    tree_cols = []
    for row, i in enumerate(idx):
        if _has_tree(tree_masks, i):
            q_len, k_len = query_lens[i], kv_lens[i]
            key_pos[row, k_len - q_len : k_len] = positions[starts[i] : starts[i] + q_len]
            tree_cols.append((row, q_len, k_len))

    mask = key_valid[:, None, :] & (key_pos[:, None, :] <= q_pos[:, :, None])
    for row, q_len, k_len in tree_cols:
        tree = tree_masks[idx[row]].to(device=device, dtype=torch.bool)
        mask[row, :q_len, k_len - q_len : k_len] &= tree
    # NOTE: padded query rows see key 0 so that softmax never meets an all-masked row.
    mask[:, :, 0] |= ~query_valid
    return AttentionGroup(
        query_index=query_index,
        query_valid=query_valid,
        key_slots=key_slots,
        mask=mask[:, None, :, :],
    )
