"""The reference attention: every request on its own, visibility recomputed from first
principles (positions and tree ancestry), softmax in fp32. Slow and obviously right; the
oracle that every faster path is tested against."""

from __future__ import annotations

import torch

from ember.attention.kv_cache import KVCache
from ember.attention.metadata import AttentionMetadata


def reference_attention(q: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """``q`` ``[T, H_q, D]`` over the (already written) cache -> ``[T, H_q, D]``."""
    k_cache, v_cache = kv_cache
    num_kv_heads, _, block_size, head_dim = k_cache.shape
    k_flat = k_cache.view(num_kv_heads, -1, head_dim)
    v_flat = v_cache.view(num_kv_heads, -1, head_dim)
    group = q.shape[1] // num_kv_heads
    out = torch.empty_like(q)
    for span in meta.spans:
        storage = torch.arange(span.kv_len, device=q.device)
        slots = span.block_ids[storage // block_size] * block_size + storage % block_size
        keys = k_flat[:, slots].float().repeat_interleave(group, dim=0)  # [H_q, L, D]
        values = v_flat[:, slots].float().repeat_interleave(group, dim=0)
        queries = q[span.query_start : span.query_end].float().transpose(0, 1)  # [H_q, Q, D]
        q_pos = meta.positions[span.query_start : span.query_end]
        visible = span.key_positions[None, :] <= q_pos[:, None]
        if span.tree_mask is not None:
            tree_cols = slice(span.kv_len - span.num_queries, span.kv_len)
            visible[:, tree_cols] &= span.tree_mask
        scores = (queries @ keys.transpose(1, 2)) * scale
        scores = scores.masked_fill(~visible, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[span.query_start : span.query_end] = (probs @ values).transpose(0, 1).to(q.dtype)
    return out
