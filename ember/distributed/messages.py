"""Typed messages between the engine process and its rank workers (one pipe per rank).

engine -> every rank:   WorkerInit (once), StepRequest (one per step: the batch, with the KV
                        copies it applies first), ReadKV / WriteKV (moving requests between
                        engines), Shutdown
rank -> engine:         Ready (once, after loading), StepResult (only the result rank:
                        last pipeline stage, tensor rank 0), KVShard (every rank, for ReadKV),
                        WorkerFailed (then it exits)

Each carries ids; handling a Shutdown twice is harmless. Tensors travel as numpy arrays
(pickled by value; no shared-memory handles between processes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ember.core.batch import Batch
from ember.distributed.layout import ParallelLayout


@dataclass(frozen=True)
class WorkerInit:
    rank: int
    layout: ParallelLayout
    model_path: Path
    dtype: str  # a torch dtype's name, e.g. "float32"
    device: str  # "cpu", or "cuda" (rank r uses cuda:r % device_count)
    num_blocks: int
    block_size: int
    attention_backend: str
    master_port: int
    parent_pid: int
    timeout_s: float
    master_addr: str = "127.0.0.1"  # rank 0's host, where the process group's store listens


@dataclass(frozen=True)
class Ready:
    rank: int
    pid: int
    num_params: int  # parameters this rank holds


@dataclass(frozen=True)
class StepRequest:
    step_id: int
    batch: Batch


@dataclass(frozen=True)
class WireTensor:
    """A tensor as raw bytes (numpy has no bfloat16), pickled by value."""

    data: np.ndarray  # uint8
    dtype: str
    shape: tuple[int, ...]

    @classmethod
    def of(cls, tensor: torch.Tensor) -> WireTensor:
        flat = tensor.detach().contiguous().cpu().reshape(-1)
        return cls(flat.view(torch.uint8).numpy(), str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape))

    def tensor(self) -> torch.Tensor:
        return torch.from_numpy(self.data.copy()).view(getattr(torch, self.dtype)).reshape(self.shape)


@dataclass(frozen=True)
class ReadKV:
    """Every rank answers with its ``KVShard`` of these cache slots."""

    request_id: int
    slots: list[int]


@dataclass(frozen=True)
class KVShard:
    request_id: int
    rank: int
    kv: WireTensor  # [stage layers, 2, local KV heads, len(slots), head_dim]


@dataclass(frozen=True)
class WriteKV:
    """Store ``kv`` (this rank's layers and KV heads) at the cache slots."""

    slots: list[int]
    kv: WireTensor


@dataclass(frozen=True)
class StepResult:
    step_id: int
    sample_ids: list[str]
    logits: np.ndarray  # [len(sample_ids), vocab] fp32
    prompt_logits: dict[str, tuple[int, np.ndarray]]
    tree_logits: dict[str, np.ndarray]


@dataclass(frozen=True)
class WorkerFailed:
    rank: int
    error: str


@dataclass(frozen=True)
class Shutdown:
    reason: str = "close"
