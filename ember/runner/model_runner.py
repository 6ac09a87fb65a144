"""Runs one scheduled batch through the model: owns the KV cache tensors, builds the step's
inputs and attention metadata, returns logits rows. It never imports the scheduler."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from ember.attention import allocate_kv_cache, build_attention_metadata
from ember.attention.kv_cache import copy_slots
from ember.engine.batch import Batch
from ember.models.config import ModelArchConfig


@dataclass(frozen=True)
class RunnerOutput:
    sample_ids: list[str]  # request ids, one per row of ``logits``
    logits: torch.Tensor  # [len(sample_ids), vocab] fp32
    prompt_logits: dict[str, tuple[int, torch.Tensor]]  # id -> (first position, [n, vocab])
    tree_logits: dict[str, torch.Tensor] = field(default_factory=dict)  # id -> [nodes, vocab]


def kv_bytes_per_block(arch: ModelArchConfig, block_size: int, dtype: torch.dtype) -> int:
    element_size = torch.empty((), dtype=dtype).element_size()
    return 2 * arch.num_layers * block_size * arch.num_kv_heads * arch.head_dim * element_size


class ModelRunner:
    def __init__(
        self,
        model: torch.nn.Module,
        arch: ModelArchConfig,
        *,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
        attention_backend: str = "paged",
        compile: bool = False,
    ) -> None:
        self.model = model
        self.arch = arch
        self.block_size = block_size
        self.device = device
        self.attention_backend = attention_backend
        self.compiled = compile
        if compile:
            # Each decoder layer is compiled with dynamic shapes (the step's token count
            # changes every step); attention stays outside the graphs (see ember.attention).
            for layer in model.decoder_layers:
                layer.compile(dynamic=True)
        self.kv_caches = allocate_kv_cache(
            num_layers=arch.num_layers,
            num_blocks=num_blocks,
            block_size=block_size,
            num_kv_heads=arch.num_kv_heads,
            head_dim=arch.head_dim,
            dtype=dtype,
            device=device,
        )

    @torch.inference_mode()
    def run(self, batch: Batch) -> RunnerOutput:
        items = batch.requests
        input_ids = list(itertools.chain.from_iterable(r.token_ids for r in items))
        positions = list(itertools.chain.from_iterable(r.positions() for r in items))
        query_lens = [r.num_tokens for r in items]
        has_trees = any(r.tree is not None for r in items)
        storage = tree_masks = None
        if has_trees:
            storage = torch.tensor(
                list(itertools.chain.from_iterable(range(*r.ranges[0]) if r.tree else r.positions() for r in items)),
                dtype=torch.long,
            )
            tree_masks = [r.tree.tree_mask() if r.tree else None for r in items]
        meta = build_attention_metadata(
            query_lens=query_lens,
            positions=torch.tensor(positions, dtype=torch.long),
            kv_lens=[r.kv_len for r in items],
            block_tables=[r.block_ids for r in items],
            block_size=self.block_size,
            storage_index=storage,
            tree_masks=tree_masks,
            device=self.device,
            backend=self.attention_backend,
            compiled=self.compiled,
        )
        hidden = self.model(
            torch.tensor(input_ids, dtype=torch.long, device=self.device),
            meta.slot_mapping.new_tensor(positions),
            self.kv_caches,
            meta,
        )

        sample_rows, sample_ids, prompt_rows, tree_rows = [], [], {}, {}
        end = 0
        for item in items:
            start, end = end, end + item.num_tokens
            if item.tree is not None:
                tree_rows[item.request_id] = (start, end)
                continue
            if item.prompt_logits:
                prompt_rows[item.request_id] = (item.start_position, start, end)
            if item.sample:
                sample_rows.append(end - 1)
                sample_ids.append(item.request_id)
        logits = self.model.compute_logits(hidden[sample_rows]).float()
        prompt_logits = {
            rid: (pos, self.model.compute_logits(hidden[s:e]).float())
            for rid, (pos, s, e) in prompt_rows.items()
        }
        tree_logits = {rid: self.model.compute_logits(hidden[s:e]).float() for rid, (s, e) in tree_rows.items()}
        return RunnerOutput(sample_ids, logits, prompt_logits, tree_logits)

    @torch.inference_mode()
    def copy_kv(self, moves: list[tuple[list[int], int, int]]) -> None:
        """Copy KV between storage indices of requests: ``(block_ids, src, dst)`` each, applied
        in order (speculation commits an accepted path to its final slots this way)."""
        if not moves:
            return
        bs = self.block_size
        src = torch.tensor([t[s // bs] * bs + s % bs for t, s, _ in moves], device=self.device)
        dst = torch.tensor([t[d // bs] * bs + d % bs for t, _, d in moves], device=self.device)
        copy_slots(self.kv_caches, src, dst)
