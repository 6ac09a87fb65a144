"""The fast attention path over the paged cache (pure torch, any device).

Decodes: one batched matmul over every decoding request's gathered blocks, query heads
grouped under their KV head (no GQA repeat), masked softmax in fp32.
Others (prefill chunks, hole recomputation, trees): one SDPA call per request with its
precomputed visibility mask, so a long chunk never pads the rest of the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.attention.kv_cache import KVCache, gather_blocks, head_block_index
from ember.attention.metadata import AttentionMetadata, RequestSpan


def paged_attention(q: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """``q`` ``[T, H_q, D]`` over the (already written) cache -> ``[T, H_q, D]``."""
    k_cache, v_cache = kv_cache
    out = torch.empty_like(q)
    if meta.decode is not None:
        decode_q = q[meta.decode.query_rows]
        if meta.compiled:
            o = _fused_decode_compiled(
                decode_q, k_cache, v_cache, meta.decode.block_table, meta.decode.key_valid, scale
            )
        else:
            o = _decode(decode_q, k_cache, v_cache, meta, scale)
        out[meta.decode.query_rows] = o
    for span in meta.prefill_spans:
        out[span.query_start : span.query_end] = span_attention(q, k_cache, v_cache, span, scale)
    return out


def span_attention(q: torch.Tensor, k_cache, v_cache, span: RequestSpan, scale: float) -> torch.Tensor:
    """One request's queries (``span.mask`` visibility) -> ``[Q, H_q, D]``."""
    keys = gather_blocks(k_cache, span.block_ids)[:, : span.kv_len]  # [H_kv, L, D]
    values = gather_blocks(v_cache, span.block_ids)[:, : span.kv_len]
    queries = q[span.query_start : span.query_end].transpose(0, 1)  # [H_q, Q, D]
    o = F.scaled_dot_product_attention(
        queries[None],
        keys[None].to(q.dtype),
        values[None].to(q.dtype),
        attn_mask=span.mask[None, None],
        scale=scale,
        enable_gqa=queries.shape[0] != keys.shape[0],
    )
    return o[0].transpose(0, 1)


def _decode(q: torch.Tensor, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    decode = meta.decode
    num_reqs, num_heads, head_dim = q.shape
    num_kv_heads, num_blocks = k_cache.shape[:2]
    if decode.workspace.get("rows") is None:
        # NOTE: computed by the first layer, reused by the rest (same tables, same shapes).
        rows = head_block_index(decode.block_table, num_kv_heads, num_blocks)
        decode.workspace["rows"] = rows
        decode.workspace["k"] = k_cache.new_empty(rows.shape[0], k_cache.shape[2] * head_dim)
        decode.workspace["v"] = v_cache.new_empty(rows.shape[0], v_cache.shape[2] * head_dim)
    ws = decode.workspace
    keys = gather_blocks(k_cache, decode.block_table, rows=ws["rows"], out=ws["k"]).to(q.dtype)
    values = gather_blocks(v_cache, decode.block_table, rows=ws["rows"], out=ws["v"]).to(q.dtype)
    grouped = q.view(num_reqs, num_kv_heads, num_heads // num_kv_heads, head_dim).transpose(0, 1)
    scores = torch.matmul(grouped, keys.transpose(-1, -2)).float() * scale  # [H_kv, B, G, L]
    scores.masked_fill_(~decode.key_valid[None, :, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(q.dtype)
    out = torch.matmul(probs, values)  # [H_kv, B, G, D]
    return out.transpose(0, 1).reshape(num_reqs, num_heads, head_dim)


def _fused_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    key_valid: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """The decode attention written as gathers, products and reductions, for inductor to
    fuse into loops that read K/V straight from their blocks (no gathered copy)."""
    num_reqs, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[0]
    keys = k_cache[:, block_table].flatten(2, 3)  # [H_kv, B, L, D]
    values = v_cache[:, block_table].flatten(2, 3)
    grouped = q.view(num_reqs, num_kv_heads, num_heads // num_kv_heads, head_dim).transpose(0, 1).float()
    scores = (grouped[:, :, :, None, :] * keys[:, :, None, :, :].float()).sum(-1) * scale
    scores = scores.masked_fill(~key_valid[None, :, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = (probs[..., None] * values[:, :, None, :, :].float()).sum(-2)  # [H_kv, B, G, D]
    return out.to(q.dtype).transpose(0, 1).reshape(num_reqs, num_heads, head_dim)


_fused_decode_compiled = torch.compile(_fused_decode, dynamic=True)
