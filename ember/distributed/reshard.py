"""The re-sharding plan for a change of parallel layout (SpotServe's re-parallelization).

For a change from (tp, pp) to (tp', pp') on one model shape: for every new rank, every
parameter slice and KV-cache slice (layer x KV-head range) it must hold, and which old rank
holds those indices. The plan is pure data (``Transfer`` records); moving bytes is the
caller's job. Coordinates are within one data-parallel replica (dp = 0); each replica
re-shards the same way.

Choosing a source when several old ranks hold the same indices (replicated tensors,
replicated KV heads): the old rank with the SAME rank number as the destination if it
holds them (its bytes stay in place: ``is_local``), else the lowest old rank. So the plan
for identical layouts is all local, and every needed index comes from exactly one source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ember.distributed.layout import ParallelLayout, RankCoord
from ember.distributed.shards import (
    TensorSpec,
    kv_specs,
    shard_slice,
    stages_holding,
    tensor_specs,
)
from ember.models.config import ModelArchConfig


@dataclass(frozen=True)
class Transfer:
    """Indices ``[start, stop)`` of axis ``dim`` of tensor ``name`` (full-tensor
    coordinates; every index of the other axes) go from old ``src_rank`` to new
    ``dst_rank``. ``kind == "kv"``: ``name`` is ``kv.{layer}`` and the axis is KV heads of
    both the K and the V cache of that layer."""

    kind: Literal["param", "kv"]
    name: str
    layer: int | None
    dim: int
    start: int
    stop: int
    src_rank: int
    dst_rank: int
    src: RankCoord
    dst: RankCoord

    @property
    def is_local(self) -> bool:
        return self.src_rank == self.dst_rank


@dataclass(frozen=True)
class ReshardPlan:
    old: ParallelLayout
    new: ParallelLayout
    transfers: list[Transfer]

    @property
    def remote(self) -> list[Transfer]:
        return [t for t in self.transfers if not t.is_local]


def held_slice(spec: TensorSpec, arch: ModelArchConfig, layout: ParallelLayout, rank: int):
    """The slice of ``spec`` that ``rank`` of ``layout`` holds, or None."""
    coord = layout.coord(rank)
    if coord.pp not in stages_holding(spec, arch, layout):
        return None
    piece = shard_slice(spec, layout.tp_size, coord.tp)
    return piece if piece.size > 0 else None


def plan_reshard(arch: ModelArchConfig, old: ParallelLayout, new: ParallelLayout) -> ReshardPlan:
    for layout in (old, new):
        if layout.dp_size != 1:
            raise ValueError("plan_reshard works within one data-parallel replica (dp = 1)")
        layout.check_model(arch)
    specs = [(s, "param") for s in tensor_specs(arch).values()] + [(s, "kv") for s in kv_specs(arch)]
    transfers: list[Transfer] = []
    for dst_rank in range(new.world_size):
        for spec, kind in specs:
            need = held_slice(spec, arch, new, dst_rank)
            if need is None:
                continue
            holders = [
                (src_rank, piece)
                for src_rank in range(old.world_size)
                if (piece := held_slice(spec, arch, old, src_rank)) is not None
                and piece.start < need.stop
                and need.start < piece.stop
            ]
            cuts = sorted(
                {need.start, need.stop}
                | {b for _, p in holders for b in (p.start, p.stop) if need.start < b < need.stop}
            )
            pieces: list[tuple[int, int, int]] = []  # (start, stop, src_rank)
            for lo, hi in zip(cuts, cuts[1:]):
                sources = [r for r, p in holders if p.start <= lo and hi <= p.stop]
                assert sources, f"no old rank holds {spec.name}[{lo}:{hi}]"
                src = dst_rank if dst_rank in sources else min(sources)
                if pieces and pieces[-1][2] == src and pieces[-1][1] == lo:
                    pieces[-1] = (pieces[-1][0], hi, src)
                else:
                    pieces.append((lo, hi, src))
            transfers.extend(
                Transfer(
                    kind, spec.name, spec.layer, need.dim, lo, hi, src, dst_rank, old.coord(src), new.coord(dst_rank)
                )
                for lo, hi, src in pieces
            )
    return ReshardPlan(old, new, transfers)
