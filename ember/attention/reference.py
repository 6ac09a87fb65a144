"""Attention over the paged KV cache, in plain torch: the oracle for faster paths."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.attention.metadata import AttentionMetadata

KVCache = tuple[torch.Tensor, torch.Tensor]  # K and V: [num_blocks, block_size, H_kv, D]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_cache: KVCache | None,
    meta: AttentionMetadata | None,
    scale: float,
) -> torch.Tensor:
    """Attention for one layer.

    Paged mode (``meta`` given): ``q`` is ``[T, H_q, D]``, ``k``/``v`` are ``[T, H_kv, D]``;
    this step's K/V are written to their cache slots first, then every query attends to
    its request's visible keys. Returns ``[T, H_q, D]``.

    Plain mode (``meta`` is None; training and cache-free forward): ``q`` is
    ``[B, S, H_q, D]`` and ``k``/``v`` ``[B, S, H_kv, D]``, causal. Returns ``[B, S, H_q, D]``.
    """
    if meta is None:
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            is_causal=True,
            scale=scale,
            enable_gqa=q.shape[2] != k.shape[2],
        )
        return out.transpose(1, 2)

    k_cache, v_cache = kv_cache
    num_kv_heads, head_dim = k_cache.shape[-2:]
    k_flat = k_cache.view(-1, num_kv_heads, head_dim)
    v_flat = v_cache.view(-1, num_kv_heads, head_dim)
    k_flat.index_copy_(0, meta.slot_mapping, k.to(k_flat.dtype))
    v_flat.index_copy_(0, meta.slot_mapping, v.to(v_flat.dtype))

    out = q.new_empty(q.shape)
    for group in meta.groups:
        q_g = q[group.query_index].transpose(1, 2)  # [B, H_q, Q, D]
        k_g = k_flat[group.key_slots].transpose(1, 2)  # [B, H_kv, L, D]
        v_g = v_flat[group.key_slots].transpose(1, 2)
        o_g = F.scaled_dot_product_attention(
            q_g,
            k_g.to(q.dtype),
            v_g.to(q.dtype),
            attn_mask=group.mask,
            scale=scale,
            enable_gqa=q_g.shape[1] != k_g.shape[1],
        ).transpose(1, 2)  # [B, Q, H_q, D]
        out[group.query_index[group.query_valid]] = o_g[group.query_valid]
    return out
