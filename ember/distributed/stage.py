"""One pipeline stage of a rank's (sharded) model: embed on the first stage, its layers,
the final norm and logits on the last. The model classes' own forward runs every layer of
a whole model; a stage needs the three pieces separately."""

from __future__ import annotations

import torch
from torch import nn

from ember.models.config import ModelArchConfig


class Stage:
    """``embed`` (first stage) -> ``run_layers`` -> ``finish`` and ``local_logits`` (last)."""

    def __init__(self, module: nn.Module, arch: ModelArchConfig):
        self.module = module
        self.arch = arch
        self.is_llama = arch.architecture != "OPTForCausalLM"
        self.inner = module.model if self.is_llama else module.model.decoder

    @property
    def layers(self) -> nn.ModuleList:
        return self.inner.layers

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        h = self.inner.embed_tokens(input_ids)
        if self.is_llama:
            return h
        if self.inner.project_in is not None:
            h = self.inner.project_in(h)
        return h + self.inner.embed_positions(positions + self.arch.position_offset)

    def run_layers(self, h: torch.Tensor, positions: torch.Tensor, kv_caches, meta) -> torch.Tensor:
        if self.is_llama:
            cos, sin = self.inner.rotary_emb(positions, h.dtype)
            for layer, kv in zip(self.layers, kv_caches):
                h = layer(h, cos, sin, kv, meta)
            return h
        for layer, kv in zip(self.layers, kv_caches):
            h = layer(h, kv, meta)
        return h

    def finish(self, h: torch.Tensor) -> torch.Tensor:
        if self.is_llama:
            return self.inner.norm(h)
        if self.inner.final_layer_norm is not None:
            h = self.inner.final_layer_norm(h)
        if self.inner.project_out is not None:
            h = self.inner.project_out(h)
        return h

    def local_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[n, embed_dim]`` -> fp32 logits over this rank's vocab chunk ``[n, chunk]``."""
        return self.module.compute_logits(hidden)
