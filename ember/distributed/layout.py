"""The parallel layout of one serving instance: validated degrees and rank coordinates.

Ranks are numbered with the tensor axis fastest, then pipeline, then data::

    rank = (dp * pp_size + pp) * tp_size + tp

so the ranks of one tensor-parallel group are contiguous (they talk most). Pipeline stages
get contiguous layer ranges, as even as possible; the remainder goes to the EARLY stages,
because the last stage also runs the final norm and the LM head.
"""

from __future__ import annotations

from dataclasses import dataclass

from ember.errors import InvalidInputError


@dataclass(frozen=True)
class RankCoord:
    dp: int
    pp: int
    tp: int


@dataclass(frozen=True)
class ParallelLayout:
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInputError(f"{name}={value!r}: must be an integer >= 1", param=name)

    @property
    def tp_size(self) -> int:
        return self.tensor_parallel_size

    @property
    def pp_size(self) -> int:
        return self.pipeline_parallel_size

    @property
    def dp_size(self) -> int:
        return self.data_parallel_size

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size * self.dp_size

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    # ------------------------------------------------------------ coordinates
    def coord(self, rank: int) -> RankCoord:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside world of {self.world_size}")
        tp = rank % self.tp_size
        pp = (rank // self.tp_size) % self.pp_size
        return RankCoord(dp=rank // (self.tp_size * self.pp_size), pp=pp, tp=tp)

    def rank(self, coord: RankCoord) -> int:
        if not (0 <= coord.dp < self.dp_size and 0 <= coord.pp < self.pp_size and 0 <= coord.tp < self.tp_size):
            raise ValueError(f"{coord} outside {self}")
        return (coord.dp * self.pp_size + coord.pp) * self.tp_size + coord.tp

    def coords(self) -> list[RankCoord]:
        return [self.coord(r) for r in range(self.world_size)]

    def tp_group_ranks(self, dp: int, pp: int) -> list[int]:
        return [self.rank(RankCoord(dp, pp, tp)) for tp in range(self.tp_size)]

    # ------------------------------------------------------------ the model
    def stage_layers(self, stage: int, num_layers: int) -> range:
        """Layers ``[start, stop)`` of pipeline stage ``stage``; the first ``num_layers %
        pp`` stages get one layer more."""
        if not 0 <= stage < self.pp_size:
            raise ValueError(f"stage {stage} outside pipeline of {self.pp_size}")
        base, extra = divmod(num_layers, self.pp_size)
        start = stage * base + min(stage, extra)
        return range(start, start + base + (stage < extra))

    def stage_of_layer(self, layer: int, num_layers: int) -> int:
        return next(s for s in range(self.pp_size) if layer in self.stage_layers(s, num_layers))

    def check_model(self, arch) -> None:
        """Raise InvalidInputError unless this layout can shard ``arch`` (a ModelArchConfig).

        Tensor parallelism splits attention by heads: tp must divide the number of query
        heads; the KV heads are split when tp divides their number and REPLICATED when their
        number divides tp (e.g. MQA, or 2 KV heads on 4 ranks: ranks 0-1 hold KV head 0,
        ranks 2-3 KV head 1, each rank's query heads all in that one group). The MLP's
        intermediate size must be divisible by tp; the vocabulary need not be (shards are
        padded). Pipeline parallelism needs at least one layer per stage."""
        tp, pp = self.tp_size, self.pp_size
        if arch.num_heads % tp:
            raise InvalidInputError(
                f"tensor_parallel_size={tp} must divide the model's {arch.num_heads} attention heads",
                param="tensor_parallel_size",
            )
        if arch.num_kv_heads % tp and tp % arch.num_kv_heads:
            raise InvalidInputError(
                f"tensor_parallel_size={tp} and the model's {arch.num_kv_heads} KV heads: one must divide the other",
                param="tensor_parallel_size",
            )
        if arch.intermediate_size % tp:
            raise InvalidInputError(
                f"tensor_parallel_size={tp} must divide the model's intermediate size {arch.intermediate_size}",
                param="tensor_parallel_size",
            )
        if pp > arch.num_layers:
            raise InvalidInputError(
                f"pipeline_parallel_size={pp} exceeds the model's {arch.num_layers} layers",
                param="pipeline_parallel_size",
            )
