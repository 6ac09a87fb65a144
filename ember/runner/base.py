"""The one runner interface: what the engine, the latency profiler and the draft proposer
need of whatever runs a batch (one process, or tensor/pipeline ranks in worker processes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from ember.core.batch import Batch, RunnerOutput


class Runner(Protocol):
    """Owns a model's KV cache and runs scheduled batches through the model.

    ``run`` first applies the batch's KV copies, then runs its tokens, and returns fp32 logits
    rows on ``device`` (the engine's, where the sampler's generators live)."""

    block_size: int
    num_blocks: int  # KV-cache blocks, each ``block_size`` slots
    kv_dtype: torch.dtype
    device: torch.device
    num_params: int  # parameters (summed over ranks; replicated tensors count per rank)
    can_profile: bool  # timing its steps here measures the model (not other processes)

    def run(self, batch: Batch) -> RunnerOutput: ...

    def read_kv(self, slots: Sequence[int]) -> torch.Tensor:
        """K and V at cache ``slots`` on every layer: ``[num_layers, 2, num_kv_heads, n,
        head_dim]`` on the CPU (whole heads, whatever the ranks hold)."""

    def write_kv(self, slots: Sequence[int], kv: torch.Tensor) -> None:
        """Store ``kv`` (``read_kv``'s shape) at ``slots``."""

    def close(self) -> None:
        """Release worker processes, if any; idempotent."""
