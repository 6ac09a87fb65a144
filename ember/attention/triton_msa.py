"""Multi-segment attention (MSA) as a Triton kernel, for GPUs (``--attention-backend triton``).

One program per (query token, query head): it walks its request's block table, reads each
KV block in place from the paged cache (no gathered copy) and keeps an online softmax
(running max, running sum, fp32 accumulator). Visibility is the one attention contract for
ordinary tokens: key storage index <= query position. That is what multi-segment queries
need: a step that recomputes holes and runs new tokens of one request has queries at
scattered positions (several segments), each seeing every key up to itself — cached
segments, recomputed holes and new tokens alike, at their original positions.

Tree tokens (speculation) keep the torch path (``paged``'s per-request SDPA with the
ancestor mask). On CPU the kernel runs under Triton's interpreter (``TRITON_INTERPRET=1``),
which is how the tests check it against ``reference_attention``; it is not a CPU fast path.
"""

from __future__ import annotations

import torch

from ember.attention.kv_cache import KVCache
from ember.attention.metadata import AttentionMetadata
from ember.attention.paged import span_attention

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is absent
    triton = None


def triton_available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _msa_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        out_ptr,
        tables_ptr,
        query_req_ptr,
        query_pos_ptr,
        kv_lens_ptr,
        scale,
        stride_qt,
        stride_qh,
        stride_kh,
        stride_kb,
        stride_ks,
        stride_ot,
        stride_oh,
        stride_table,
        GROUP: tl.constexpr,
        BLOCK_SIZE: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        token = tl.program_id(0)
        head = tl.program_id(1)
        kv_head = head // GROUP
        req = tl.load(query_req_ptr + token)
        q_pos = tl.load(query_pos_ptr + token)
        kv_len = tl.load(kv_lens_ptr + req)
        dims = tl.arange(0, BLOCK_D)
        dim_ok = dims < HEAD_DIM
        q = tl.load(q_ptr + token * stride_qt + head * stride_qh + dims, mask=dim_ok, other=0.0).to(tl.float32)
        offsets = tl.arange(0, BLOCK_SIZE)
        m_i = -float("inf")
        l_i = 0.0
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        num_keys = tl.minimum(kv_len, q_pos + 1)
        num_blocks = tl.cdiv(num_keys, BLOCK_SIZE)
        b = 0
        # NOTE: a while loop: a range() bound loaded from memory breaks the interpreter on numpy 2.
        while b < num_blocks:
            block = tl.load(tables_ptr + req * stride_table + b)
            storage = b * BLOCK_SIZE + offsets
            base = kv_head * stride_kh + block * stride_kb + offsets[:, None] * stride_ks + dims[None, :]
            k = tl.load(k_ptr + base, mask=dim_ok[None, :], other=0.0).to(tl.float32)
            v = tl.load(v_ptr + base, mask=dim_ok[None, :], other=0.0).to(tl.float32)
            scores = tl.sum(k * q[None, :], axis=1) * scale
            scores = tl.where(storage < num_keys, scores, -float("inf"))
            m_new = tl.maximum(m_i, tl.max(scores, axis=0))
            p = tl.exp(scores - m_new)
            alpha = tl.exp(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, axis=0)
            acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
            m_i = m_new
            b += 1
        out = acc / l_i
        tl.store(out_ptr + token * stride_ot + head * stride_oh + dims, out.to(out_ptr.dtype.element_ty), mask=dim_ok)


def triton_attention(q: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """``q`` ``[T, H_q, D]`` over the (already written) cache -> ``[T, H_q, D]``."""
    if triton is None:
        raise RuntimeError("attention backend 'triton' needs the triton package")
    k_cache, v_cache = kv_cache
    num_kv_heads, _, block_size, head_dim = k_cache.shape
    out = torch.empty_like(q)
    plain = [s for s in meta.spans if s.tree_mask is None]
    if plain:
        device = q.device
        rows = torch.cat([torch.arange(s.query_start, s.query_end, device=device) for s in plain])
        query_req = torch.cat(
            [torch.full((s.num_queries,), i, device=device, dtype=torch.int32) for i, s in enumerate(plain)]
        )
        max_blocks = max(s.block_ids.numel() for s in plain)
        tables = torch.zeros(len(plain), max_blocks, dtype=torch.int32, device=device)
        for i, s in enumerate(plain):
            tables[i, : s.block_ids.numel()] = s.block_ids
        kv_lens = torch.tensor([s.kv_len for s in plain], dtype=torch.int32, device=device)
        queries = q[rows].contiguous()
        result = torch.empty_like(queries)
        grid = (queries.shape[0], queries.shape[1])
        _msa_kernel[grid](
            queries,
            k_cache,
            v_cache,
            result,
            tables,
            query_req,
            meta.positions[rows].to(torch.int32),
            kv_lens,
            scale,
            queries.stride(0),
            queries.stride(1),
            k_cache.stride(0),
            k_cache.stride(1),
            k_cache.stride(2),
            result.stride(0),
            result.stride(1),
            tables.stride(0),
            GROUP=q.shape[1] // num_kv_heads,
            BLOCK_SIZE=block_size,
            HEAD_DIM=head_dim,
            BLOCK_D=triton.next_power_of_2(head_dim),
        )
        out[rows] = result
    for span in meta.spans:
        if span.tree_mask is not None:
            out[span.query_start : span.query_end] = span_attention(q, k_cache, v_cache, span, scale)
    return out
