"""The single-process runner: owns the KV cache tensors, builds the step's inputs and
attention metadata, returns logits rows. It never imports the scheduler."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ember.attention import allocate_kv_cache
from ember.attention.kv_cache import apply_kv_copies, read_slots, write_slots
from ember.attention.step_inputs import build_step_inputs
from ember.core.batch import Batch, RunnerOutput
from ember.models.config import ModelArchConfig


def kv_bytes_per_block(arch: ModelArchConfig, block_size: int, dtype: torch.dtype) -> int:
    element_size = torch.empty((), dtype=dtype).element_size()
    return 2 * arch.num_layers * block_size * arch.num_kv_heads * arch.head_dim * element_size


class ModelRunner:
    can_profile = True

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
        self.num_blocks = num_blocks
        self.kv_dtype = dtype
        self.device = torch.device(device)
        self.num_params = sum(p.numel() for p in model.parameters())
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
            device=self.device,
        )

    @torch.inference_mode()
    def run(self, batch: Batch) -> RunnerOutput:
        apply_kv_copies(self.kv_caches, batch.kv_copies)
        if batch.is_empty:
            return RunnerOutput([], torch.empty(0, self.arch.vocab_size, device=self.device), {})
        inputs = build_step_inputs(
            batch.requests,
            block_size=self.block_size,
            device=self.device,
            backend=self.attention_backend,
            compiled=self.compiled,
        )
        hidden = self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.meta)

        def logits(start: int, end: int) -> torch.Tensor:
            return self.model.compute_logits(hidden[start:end]).float()

        # NOTE: sample rows go through the LM head together, prompt and tree rows per request.
        sample = [r for r in inputs.rows if r.kind == "sample"]
        return RunnerOutput(
            sample_ids=[r.request_id for r in sample],
            logits=self.model.compute_logits(hidden[[r.start for r in sample]]).float(),
            prompt_logits={
                r.request_id: (r.first_position, logits(r.start, r.end)) for r in inputs.rows if r.kind == "prompt"
            },
            tree_logits={r.request_id: logits(r.start, r.end) for r in inputs.rows if r.kind == "tree"},
        )

    @torch.inference_mode()
    def read_kv(self, slots: Sequence[int]) -> torch.Tensor:
        return read_slots(self.kv_caches, torch.tensor(list(slots), dtype=torch.long, device=self.device)).cpu()

    @torch.inference_mode()
    def write_kv(self, slots: Sequence[int], kv: torch.Tensor) -> None:
        index = torch.tensor(list(slots), dtype=torch.long, device=self.device)
        write_slots(self.kv_caches, index, kv.to(self.device))

    def close(self) -> None:
        """Nothing to release: the model lives in this process."""
