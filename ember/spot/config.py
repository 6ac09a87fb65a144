"""A parallel configuration of the serving deployment: `(dp, tp, pp, batch, M1, M2)`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


def _is_pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


@dataclass(frozen=True, kw_only=True)
class ParallelConfig:
    """`dp` replicas, each a `pp`-stage pipeline of `tp`-way tensor-parallel stages, serving
    batches of up to `batch_size` requests split into `prefill_micro` micro-batches for the
    prompt and `decode_micro` for each decode step."""

    dp: int
    tp: int
    pp: int
    batch_size: int
    prefill_micro: int = 1
    decode_micro: int = 1

    def __post_init__(self) -> None:
        for name in ("dp", "tp", "pp", "batch_size", "prefill_micro", "decode_micro"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ParallelConfig.{name} must be a positive int, got {value!r}")
        for name in ("tp", "batch_size", "prefill_micro", "decode_micro"):
            if not _is_pow2(getattr(self, name)):
                raise ValueError(f"ParallelConfig.{name} must be a power of two, got {getattr(self, name)}")
        for name in ("prefill_micro", "decode_micro"):
            if getattr(self, name) > self.batch_size:
                raise ValueError(f"ParallelConfig.{name} ({getattr(self, name)}) > batch_size ({self.batch_size})")

    @property
    def gpus_per_replica(self) -> int:
        return self.tp * self.pp

    @property
    def num_gpus(self) -> int:
        return self.dp * self.tp * self.pp

    @property
    def shape(self) -> tuple[int, int]:
        """(tp, pp): what decides where a GPU's weights live; dp and batching do not."""
        return self.tp, self.pp

    def short(self) -> str:
        return f"dp{self.dp}.tp{self.tp}.pp{self.pp}.b{self.batch_size}.m{self.prefill_micro}/{self.decode_micro}"


class Device(NamedTuple):
    """One GPU: the instance it lives on and its index there."""

    instance_id: str
    local_rank: int


class Position(NamedTuple):
    """A place in a configuration: replica, tensor-parallel rank, pipeline stage."""

    replica: int
    tp_rank: int
    pp_stage: int


def positions_of(config: ParallelConfig) -> list[Position]:
    """All positions in (replica, stage, tp rank) order, tp fastest."""
    return [Position(r, t, p) for r in range(config.dp) for p in range(config.pp) for t in range(config.tp)]
