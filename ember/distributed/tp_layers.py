"""A rank's part of a model: the existing model classes with sharded Linears and three
collectives (row-parallel all-reduce, vocab-parallel embedding all-reduce, logits
all-gather in the worker), applied after the model is built on the meta device.

    column-parallel  qkv_proj (by heads, GQA kept), gate_up_proj / fc1: plain nn.Linear
                     with fewer output rows; each rank computes its own heads
    row-parallel     o_proj / out_proj, down_proj / fc2: ``RowParallelLinear`` (all-reduce
                     of the partial sums, bias added once after it)
    vocab-parallel   embed_tokens: ``VocabParallelEmbedding``; lm_head: nn.Linear over the
                     rank's vocab chunk (the worker all-gathers the logits)

Pipeline stages keep only their layers (renumbered from 0) and the non-layer modules
``shards.stages_holding`` gives them; the rest is dropped before memory is allocated.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ember.distributed.layout import ParallelLayout, RankCoord
from ember.distributed.shards import local_sizes
from ember.models.config import ModelArchConfig
from ember.models.weights import HFWeightMap


class RowParallelLinear(nn.Module):
    """``y = all_reduce(x_local @ W_local^T) + b``: the input dim is sharded."""

    def __init__(self, in_local: int, out_features: int, *, bias: bool, group):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_local))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        if self.group is not None:
            dist.all_reduce(y, group=self.group)
        return y if self.bias is None else y + self.bias


class VocabParallelEmbedding(nn.Module):
    """Rows ``[start, start + chunk)`` of the embedding (padded with zero rows past the
    vocabulary); ids outside contribute zeros and the all-reduce fills them in."""

    def __init__(self, chunk: int, dim: int, *, start: int, group):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(chunk, dim))
        self.start = start
        self.group = group

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        inside = (local >= 0) & (local < self.weight.shape[0])
        out = F.embedding(local.clamp(0, self.weight.shape[0] - 1), self.weight)
        out = out * inside.unsqueeze(-1).to(out.dtype)
        if self.group is not None:
            dist.all_reduce(out, group=self.group)
        return out


def is_llama(arch: ModelArchConfig) -> bool:
    return arch.architecture != "OPTForCausalLM"


def shard_model(model: nn.Module, arch: ModelArchConfig, layout: ParallelLayout, coord: RankCoord, group) -> nn.Module:
    """Turn a meta-device full model into rank ``coord``'s part (still on meta)."""
    tp, sizes = layout.tp_size, local_sizes(arch, layout.tp_size, coord.tp)
    chunk = sizes["vocab_chunk"]
    stages = layout.stage_layers(coord.pp, arch.num_layers)
    first, last = coord.pp == 0, coord.pp == layout.pp_size - 1
    inner = model.model if is_llama(arch) else model.model.decoder
    hidden, head_dim = arch.hidden_size, arch.head_dim
    with torch.device("meta"):
        inner.layers = nn.ModuleList(inner.layers[i] for i in stages)
        if tp > 1:
            for layer in inner.layers:
                attn = layer.self_attn
                q_size = sizes["num_heads"] * head_dim
                if is_llama(arch):
                    kv_size = sizes["num_kv_heads"] * head_dim
                    attn.num_heads, attn.num_kv_heads = sizes["num_heads"], sizes["num_kv_heads"]
                    attn.q_size, attn.kv_size = q_size, kv_size
                    attn.qkv_proj = nn.Linear(hidden, q_size + 2 * kv_size, bias=arch.qkv_bias)
                    attn.o_proj = RowParallelLinear(q_size, hidden, bias=arch.o_proj_bias, group=group)
                    inter = sizes["intermediate_size"]
                    layer.mlp.gate_up_proj = nn.Linear(hidden, 2 * inter, bias=arch.mlp_bias)
                    layer.mlp.down_proj = RowParallelLinear(inter, hidden, bias=arch.mlp_bias, group=group)
                else:
                    attn.num_heads = sizes["num_heads"]
                    attn.qkv_proj = nn.Linear(hidden, 3 * q_size, bias=arch.enable_bias)
                    attn.out_proj = RowParallelLinear(q_size, hidden, bias=arch.enable_bias, group=group)
                    inter = sizes["intermediate_size"]
                    layer.fc1 = nn.Linear(hidden, inter, bias=arch.enable_bias)
                    layer.fc2 = RowParallelLinear(inter, hidden, bias=arch.enable_bias, group=group)
        embed_dim = arch.embed_dim
        keeps_embedding = first or (last and arch.tie_word_embeddings)
        inner.embed_tokens = (
            VocabParallelEmbedding(chunk, embed_dim, start=coord.tp * chunk, group=group if tp > 1 else None)
            if keeps_embedding
            else None
        )
        if model.lm_head is not None:
            model.lm_head = nn.Linear(embed_dim, chunk, bias=False) if last else None
        if is_llama(arch):
            if not last:
                inner.norm = None
        else:
            if not first:
                inner.embed_positions = inner.project_in = None
            if not last:
                inner.final_layer_norm = inner.project_out = None
    return model


def local_weight_map(model: nn.Module, arch: ModelArchConfig, layout: ParallelLayout, coord: RankCoord) -> HFWeightMap:
    """HF names (layers renumbered from the stage's first) -> the rank's fused parameters."""
    sizes = local_sizes(arch, layout.tp_size, coord.tp)
    q_rows = sizes["num_heads"] * arch.head_dim
    if is_llama(arch):
        kv_rows = sizes["num_kv_heads"] * arch.head_dim
        inter = sizes["intermediate_size"]
        fused = {
            "self_attn.qkv_proj": [
                ("self_attn.q_proj", q_rows),
                ("self_attn.k_proj", kv_rows),
                ("self_attn.v_proj", kv_rows),
            ],
            "mlp.gate_up_proj": [("mlp.gate_proj", inter), ("mlp.up_proj", inter)],
        }
    else:
        fused = {"self_attn.qkv_proj": [(f"self_attn.{p}_proj", q_rows) for p in ("q", "k", "v")]}
    return HFWeightMap(model, fused)
