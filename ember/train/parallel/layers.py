"""Per-layer pieces of the hybrid-parallel runtime: Megatron-style TP of an Ember decoder
layer, the batch re-layout between layers of different TP degree, and checkpointing.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    RowwiseParallel,
    parallelize_module,
)
from torch.utils.checkpoint import checkpoint

from ember.train.parallel.mesh import PlanMesh


def tp_row_order(sizes: list[int], tp: int) -> torch.Tensor:
    """Row permutation of a fused projection made of parts with ``sizes`` rows, after which
    contiguous shard ``j`` of ``tp`` holds slice ``j`` of every part::

        [q0 q1 | k0 k1 | v0 v1]  ->  [q0 k0 v0 | q1 k1 v1]      (tp = 2)
    """
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    pieces = []
    for j in range(tp):
        for offset, size in zip(offsets, sizes):
            step = size // tp
            pieces.append(torch.arange(offset + j * step, offset + (j + 1) * step))
    return torch.cat(pieces)


def tp_limit(num_heads: int, num_kv_heads: int, intermediate_size: int) -> int:
    """The largest power-of-two TP degree the layer shape allows (heads stay whole)."""
    t = 1
    while all(n % (2 * t) == 0 for n in (num_heads, num_kv_heads, intermediate_size)):
        t *= 2
    return t


def tensor_parallelize_layer(layer: nn.Module, tp_mesh: DeviceMesh) -> None:
    """Shard a ``LlamaDecoderLayer`` in place over ``tp_mesh`` (Megatron-LM column/row).

    q/k/v and gate/up are fused Linears, so their rows are first permuted (``tp_row_order``)
    so that each column shard holds whole heads of q, k and v (and matching gate/up rows);
    o_proj and down_proj shard their input dim. The attention then runs on its local heads.
    Norm weights stay replicated. Gradients of a layer's input are all-reduced by DTensor.
    """
    tp = tp_mesh.size()
    attn, mlp = layer.self_attn, layer.mlp
    if attn.num_heads % tp or attn.num_kv_heads % tp:
        raise ValueError(f"tp={tp} must divide num_heads={attn.num_heads} and num_kv_heads={attn.num_kv_heads}")
    inter = mlp.down_proj.in_features
    if inter % tp:
        raise ValueError(f"tp={tp} must divide intermediate_size={inter}")
    _permute_rows(attn.qkv_proj, tp_row_order([attn.q_size, attn.kv_size, attn.kv_size], tp))
    _permute_rows(mlp.gate_up_proj, tp_row_order([inter, inter], tp))
    parallelize_module(
        layer,
        tp_mesh,
        {
            "self_attn.qkv_proj": ColwiseParallel(),
            "self_attn.o_proj": RowwiseParallel(),
            "mlp.gate_up_proj": ColwiseParallel(),
            "mlp.down_proj": RowwiseParallel(),
        },
    )
    attn.num_heads //= tp
    attn.num_kv_heads //= tp
    attn.q_size //= tp
    attn.kv_size //= tp


def _permute_rows(linear: nn.Linear, order: torch.Tensor) -> None:
    with torch.no_grad():
        linear.weight.copy_(linear.weight[order])
        if linear.bias is not None:
            linear.bias.copy_(linear.bias[order])


class CheckpointedLayer(nn.Module):
    """Recomputes ``layer``'s activations in backward (non-reentrant checkpointing)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x, *args):
        out = checkpoint(self.layer, x, *args, use_reentrant=False)
        return _KeepInput.apply(out, x)


class _KeepInput(torch.autograd.Function):
    """Identity on ``out`` that saves ``x`` through the ordinary saved-tensor hooks.

    NOTE: checkpointing keeps its input alive until backward anyway; saving it here too
    costs nothing and lets a ``MemoryMeter`` see it (checkpoint's own hooks hide it)."""

    @staticmethod
    def forward(ctx, out, x):
        ctx.save_for_backward(x)
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _GatherBatch(torch.autograd.Function):
    """Forward: concatenate the group's batch slices. Backward: keep this rank's slice of
    the gradient (it is replicated over the group, like the gathered batch)."""

    @staticmethod
    def forward(ctx, x, group, index, parts):
        ctx.index, ctx.parts = index, parts
        out = [torch.empty_like(x) for _ in range(parts)]
        dist.all_gather(out, x.contiguous(), group=group)
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad):
        return grad.chunk(ctx.parts, dim=0)[ctx.index].contiguous(), None, None, None


class _SliceBatch(torch.autograd.Function):
    """Forward: keep this rank's slice of a replicated batch. Backward: gather the slices'
    gradients so every rank of the group holds the full, identical gradient."""

    @staticmethod
    def forward(ctx, x, group, index, parts):
        ctx.group, ctx.parts = group, parts
        return x.chunk(parts, dim=0)[index].contiguous()

    @staticmethod
    def backward(ctx, grad):
        out = [torch.empty_like(grad) for _ in range(ctx.parts)]
        dist.all_gather(out, grad.contiguous(), group=ctx.group)
        return torch.cat(out, dim=0), None, None, None


def relayout(x: torch.Tensor, tp_from: int, tp_to: int, mesh: PlanMesh) -> torch.Tensor:
    """Move ``x`` ``[batch, ...]`` from the batch layout of TP degree ``tp_from`` to that of
    ``tp_to`` (see ``ember.planner.strategy``: the batch of a TP group is replicated inside
    it and split across data-parallel groups)."""
    if tp_from == tp_to:
        return x
    group, index = mesh.relayout_group(tp_from, tp_to)
    parts = max(tp_from, tp_to) // min(tp_from, tp_to)
    if tp_to > tp_from:
        return _GatherBatch.apply(x, group, index, parts)
    return _SliceBatch.apply(x, group, index, parts)
