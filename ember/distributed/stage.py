"""One pipeline stage of a rank's (sharded) model: embed on the first stage, its layers,
the final norm and logits on the last. The model classes' own forward runs every layer of
a whole model; a stage needs the three pieces separately."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from ember.attention import build_attention_metadata
from ember.engine.batch import ScheduledRequest
from ember.models.config import ModelArchConfig


@dataclass
class StepInputs:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    meta: object  # AttentionMetadata
    rows: list[tuple[str, str, int, int, int]]  # (kind, request id, first position, start, end)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])


def build_step_inputs(
    items: list[ScheduledRequest], *, block_size: int, device: torch.device, backend: str
) -> StepInputs:
    """The same inputs ModelRunner builds (token ids, positions, metadata with tree masks)
    plus which hidden rows become logits: ``sample`` (the last row), ``prompt`` and ``tree``
    (every row)."""
    input_ids = list(itertools.chain.from_iterable(r.token_ids for r in items))
    positions = list(itertools.chain.from_iterable(r.positions() for r in items))
    has_trees = any(getattr(r, "tree", None) is not None for r in items)
    extra = {}
    if has_trees:
        extra["storage_index"] = torch.tensor(
            list(itertools.chain.from_iterable(range(*r.ranges[0]) if r.tree else r.positions() for r in items)),
            dtype=torch.long,
        )
        extra["tree_masks"] = [r.tree.tree_mask() if r.tree else None for r in items]
    meta = build_attention_metadata(
        query_lens=[r.num_tokens for r in items],
        positions=torch.tensor(positions, dtype=torch.long),
        kv_lens=[r.kv_len for r in items],
        block_tables=[r.block_ids for r in items],
        block_size=block_size,
        device=device,
        backend=backend,
        **extra,
    )
    rows, end = [], 0
    for item in items:
        start, end = end, end + item.num_tokens
        if getattr(item, "tree", None) is not None:
            rows.append(("tree", item.request_id, 0, start, end))
            continue
        if item.prompt_logits:
            rows.append(("prompt", item.request_id, item.start_position, start, end))
        if item.sample:
            rows.append(("sample", item.request_id, 0, end - 1, end))
    return StepInputs(
        torch.tensor(input_ids, dtype=torch.long, device=device),
        torch.tensor(positions, dtype=torch.long, device=device),
        meta,
        rows,
    )


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
