"""The one attention contract (see DESIGN.md): every query token carries an absolute
position and belongs to one request; it sees the request's keys with
``pos(k) <= pos(q)`` and, for tree tokens of this step, only itself and its ancestors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.attention.kv_cache import KVCache, allocate_kv_cache, write_kv
from ember.attention.metadata import AttentionMetadata, build_attention_metadata
from ember.attention.paged import paged_attention
from ember.attention.reference import reference_attention


def _triton_attention(q, kv_cache, meta, scale):
    from ember.attention.triton_msa import triton_attention  # NOTE: imports triton on first use

    return triton_attention(q, kv_cache, meta, scale)


BACKENDS = {"paged": paged_attention, "reference": reference_attention, "triton": _triton_attention}

__all__ = ["AttentionMetadata", "BACKENDS", "KVCache", "allocate_kv_cache", "attend", "build_attention_metadata"]


# NOTE: never traced by torch.compile: paged mode loops over the step's requests, whose
# number changes every step; compiled layers call it as an opaque function.
@torch.compiler.disable
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
    write_kv(kv_cache, meta.slot_mapping, k, v)
    return BACKENDS[meta.backend](q, kv_cache, meta, scale)
