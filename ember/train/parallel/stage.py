"""One pipeline stage of an Ember Llama as a module the pipelining schedule can run."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ember.train.parallel.layers import relayout
from ember.train.parallel.mesh import PlanMesh


class StageModule(nn.Module):
    """``[embedding] -> decoder layers -> [final norm + LM head]`` of one stage.

    ``forward``: ``input_ids`` ``[c, S]`` on the first stage, hidden ``[c, S, hidden]`` on
    the others (``c`` = this rank's samples of a micro-batch, the tp = 1 layout) -> hidden
    ``[c, S, hidden]``, or fp32 logits ``[c, S, vocab]`` on the last stage. Between layers
    of different TP degree the batch is re-laid out (``relayout``).
    """

    def __init__(
        self,
        *,
        mesh: PlanMesh,
        layers: list[nn.Module],
        layer_tps: list[int],
        rotary: nn.Module,
        embed: nn.Embedding | None = None,
        norm: nn.Module | None = None,
        head: nn.Parameter | None = None,  # None on the last stage = tied to ``embed``
        autocast_dtype: torch.dtype | None = None,
        meter=None,  # a MemoryMeter, or None
    ):
        super().__init__()
        self.mesh = mesh
        self.layers = nn.ModuleList(layers)
        self.layer_tps = list(layer_tps)
        self.rotary = rotary
        self.embed = embed
        self.norm = norm
        self.head = head
        self.autocast_dtype = autocast_dtype
        self.meter = meter

    @property
    def is_last(self) -> bool:
        return self.norm is not None

    def head_weight(self) -> torch.Tensor:
        return self.embed.weight if self.head is None else self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hooks = self.meter.hooks() if self.meter is not None else contextlib.nullcontext()
        autocast = torch.autocast(
            x.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None
        )
        with hooks, autocast:
            h = self.embed(x) if self.embed is not None else x
            positions = torch.arange(h.shape[1], device=h.device)[None]
            cos, sin = self.rotary(positions, h.dtype)
            tp = 1
            for layer, layer_tp in zip(self.layers, self.layer_tps):
                h = relayout(h, tp, layer_tp, self.mesh)
                h = layer(h, cos, sin, None, None)
                tp = layer_tp
            h = relayout(h, tp, 1, self.mesh)
            if self.norm is None:
                return h
            return F.linear(self.norm(h), self.head_weight()).float()
