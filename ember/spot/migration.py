"""Migration planner: from the old placement to the new one, which layer shards and KV caches
move where, in what order, and how long it takes.

State is cut at the finer tensor-parallel grain `G = max(tp_old, tp_new)`: piece `j` of a layer
is the slice [j/G, (j+1)/G) of its weights (and of its KV heads). A GPU keeps the pieces it
holds and needs; the rest come from a surviving holder (same instance first, then the least
loaded), else from storage. KV moves only inside one replica (old replica -> the new replica
that inherits its batch). Embeddings are pseudo-layers -1 (first stage) and -2 (last stage).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np

from ember.spot.config import Device, ParallelConfig, Position
from ember.spot.hardware import InstanceSpec, ModelMemory

EMBED_IN, EMBED_OUT = -1, -2


@dataclass(frozen=True, kw_only=True)
class Transfer:
    """`num_bytes` of `layer` go to `dst`: from `src` (kind param/kv) or from storage (load)."""

    kind: Literal["param", "kv", "load"]
    layer: int
    src: Device | None
    dst: Device
    num_bytes: int
    is_priority: bool = False  # src or dst is on a dying instance: send first
    old_replica: int | None = None


@dataclass(frozen=True, kw_only=True)
class MigrationPlan:
    """What `MigrationPlanner.plan` decided. Times in seconds."""

    new_config: ParallelConfig
    placement: Mapping[Device, Position] = field(repr=False)
    transfers: tuple[Transfer, ...] = field(repr=False)
    layer_order: tuple[int, ...]
    kept_bytes: int
    kv_replicas: frozenset[int]  # old replicas whose KV moves (resumable)
    kv_lost_replicas: frozenset[int]  # old replicas whose KV sat on a lost GPU
    # new replica -> old replica on exactly the same GPUs, none of which receives anything: it
    # serves on through the switch (SpotServe's device mapper keeps reusable state in place)
    intact_replicas: Mapping[int, int]
    is_memory_safe: bool
    peak_bytes: int
    est_s: float  # weights + KV
    est_params_s: float  # weights only

    @property
    def moved_bytes(self) -> int:
        return sum(t.num_bytes for t in self.transfers if t.kind != "load")

    @property
    def loaded_bytes(self) -> int:
        return sum(t.num_bytes for t in self.transfers if t.kind == "load")


class _Layout:
    """Which (layer, piece) a position of a configuration holds, at grain G."""

    def __init__(self, config: ParallelConfig, memory: ModelMemory, grain: int):
        self.config, self.memory, self.grain = config, memory, grain

    def layers(self, pos: Position) -> list[int]:
        out = list(self.memory.layers_of_stage(pos.pp_stage, self.config.pp))
        if pos.pp_stage == 0:
            out.append(EMBED_IN)
        if pos.pp_stage == self.config.pp - 1:
            out.append(EMBED_OUT)
        return out

    def pieces(self, pos: Position) -> range:
        per = self.grain // self.config.tp
        return range(pos.tp_rank * per, (pos.tp_rank + 1) * per)


def _overlap(a: range, b: range) -> int:
    return max(0, min(a.stop, b.stop) - max(a.start, b.start))


def _intact_replicas(
    old_placement: Mapping[Device, Position],
    new_placement: Mapping[Device, Position],
    receivers: set[Device],
    leaving: frozenset[str],
) -> dict[int, int]:
    """New replicas that are an old replica unchanged: the same GPUs (none leaving), and the plan
    sends none of them anything (no weights, no KV), so each already holds what its position needs."""
    old_gpus: dict[int, set[Device]] = defaultdict(set)
    new_gpus: dict[int, set[Device]] = defaultdict(set)
    for d, p in old_placement.items():
        old_gpus[p.replica].add(d)
    for d, p in new_placement.items():
        new_gpus[p.replica].add(d)
    out = {}
    for new_r, gpus in new_gpus.items():
        sources = {old_placement[d].replica for d in gpus if d in old_placement}
        if len(sources) != 1:
            continue
        old_r = sources.pop()
        if old_gpus[old_r] == gpus and not gpus & receivers and all(d.instance_id not in leaving for d in gpus):
            out[new_r] = old_r
    return out


class MigrationPlanner:
    """Edge weights for the device mapper and the plan for a chosen mapping."""

    def __init__(self, memory: ModelMemory, instance: InstanceSpec):
        self.memory = memory
        self.instance = instance
        self._shared = lru_cache(maxsize=1 << 16)(self._shared_state)

    def _layer_bytes(self, layer: int) -> int:
        return self.memory.embed_bytes if layer < 0 else self.memory.layer_bytes

    def _shared_state(
        self,
        old_cfg: ParallelConfig,
        old_rank: int,
        old_stage: int,
        new_cfg: ParallelConfig,
        new_rank: int,
        new_stage: int,
    ) -> tuple[float, float]:
        """(weight bytes, decoder layers x tp share) that two positions have in common."""
        grain = max(old_cfg.tp, new_cfg.tp)
        lo, ln = _Layout(old_cfg, self.memory, grain), _Layout(new_cfg, self.memory, grain)
        old_pos, new_pos = Position(0, old_rank, old_stage), Position(0, new_rank, new_stage)
        shard = _overlap(lo.pieces(old_pos), ln.pieces(new_pos)) / grain
        if shard == 0:
            return 0.0, 0.0
        shared = set(lo.layers(old_pos)) & set(ln.layers(new_pos))
        return (
            sum(self._layer_bytes(layer) for layer in shared) * shard,
            sum(1 for layer in shared if layer >= 0) * shard,
        )

    def reusable_bytes(
        self,
        old_pos: Position,
        old_cfg: ParallelConfig,
        new_pos: Position,
        new_cfg: ParallelConfig,
        *,
        kv_tokens: Mapping[int, int],
        replica_map: Mapping[int, int | None],
    ) -> float:
        """Bytes a GPU at `old_pos` already holds that `new_pos` needs (SpotServe's edge weight):
        shared layers x shared tp slice x (weights + KV if the new replica inherits the old one's)."""
        weights, kv_layers = self._shared(
            old_cfg, old_pos.tp_rank, old_pos.pp_stage, new_cfg, new_pos.tp_rank, new_pos.pp_stage
        )
        tokens = kv_tokens.get(old_pos.replica, 0)
        if tokens and replica_map.get(new_pos.replica) == old_pos.replica:
            return weights + kv_layers * tokens * self.memory.kv_bytes_per_token_layer
        return weights

    def plan(
        self,
        *,
        old_config: ParallelConfig | None,
        old_placement: Mapping[Device, Position],
        new_config: ParallelConfig,
        new_placement: Mapping[Device, Position],
        kv_tokens: Mapping[int, int],
        replica_map: Mapping[int, int | None],
        dying_instances: frozenset[str] = frozenset(),
        lost_instances: frozenset[str] = frozenset(),
    ) -> MigrationPlan:
        """Transfers that turn `old_placement` into `new_placement`.

        `kv_tokens[old_replica]` is the KV (tokens) of its interrupted batch; `replica_map[new
        replica] = old replica` says who inherits it. GPUs on `lost_instances` are gone (neither
        source nor holder); those on `dying_instances` still send, flagged priority."""
        grain = max(old_config.tp, new_config.tp) if old_config else new_config.tp
        new_lay = _Layout(new_config, self.memory, grain)
        old_lay = _Layout(old_config, self.memory, grain) if old_config else None
        live_old = {d: p for d, p in old_placement.items() if d.instance_id not in lost_instances}
        holders: dict[tuple[int, int], list[Device]] = defaultdict(list)
        kv_holder: dict[tuple[int, int, int], Device] = {}
        held: dict[Device, set[tuple[int, int]]] = {}
        if old_lay is not None:
            for d, pos in live_old.items():
                items = {(layer, j) for layer in old_lay.layers(pos) for j in old_lay.pieces(pos)}
                held[d] = items
                for it in items:
                    holders[it].append(d)
                if kv_tokens.get(pos.replica):
                    for layer, j in items:
                        if layer >= 0:
                            kv_holder[(pos.replica, layer, j)] = d
        inherits = {new_r: old_r for new_r, old_r in replica_map.items() if old_r is not None and kv_tokens.get(old_r)}
        kv_lost = set()
        if old_lay is not None:
            for old_r in inherits.values():
                # every KV piece of the replica must still exist somewhere
                for pos in (p for p in old_placement.values() if p.replica == old_r):
                    if any(
                        (old_r, layer, j) not in kv_holder
                        for layer in old_lay.layers(pos)
                        if layer >= 0
                        for j in old_lay.pieces(pos)
                    ):
                        kv_lost.add(old_r)
                        break
        else:
            kv_lost.update(inherits.values())

        sent: dict[Device, int] = defaultdict(int)
        agg: dict[tuple, int] = defaultdict(int)
        needed: dict[Device, set[tuple[int, int]]] = {}
        kept = 0
        for dst, pos in sorted(new_placement.items()):
            mine = held.get(dst, set())
            items = {(layer, j) for layer in new_lay.layers(pos) for j in new_lay.pieces(pos)}
            needed[dst] = items
            for layer, j in sorted(items):
                nbytes = self._layer_bytes(layer) // grain
                if (layer, j) in mine:
                    kept += nbytes
                    continue
                cands = holders.get((layer, j))
                if not cands:
                    agg[("load", layer, None, dst, None)] += nbytes
                    continue
                src = min(
                    cands,
                    key=lambda s: (s.instance_id != dst.instance_id, s.instance_id in dying_instances, sent[s], s),
                )
                sent[src] += nbytes
                agg[("param", layer, src, dst, None)] += nbytes
            old_r = inherits.get(pos.replica)
            if old_r is None or old_r in kv_lost:
                continue
            kv_piece = kv_tokens[old_r] * self.memory.kv_bytes_per_token_layer // grain
            for layer, j in sorted(items):
                if layer < 0:
                    continue
                src = kv_holder[(old_r, layer, j)]
                if src == dst:
                    kept += kv_piece
                else:
                    agg[("kv", layer, src, dst, old_r)] += kv_piece
        transfers = [
            Transfer(
                kind=k,
                layer=layer,
                src=s,
                dst=d,
                num_bytes=b,
                old_replica=r,
                is_priority=(s is not None and s.instance_id in dying_instances) or d.instance_id in dying_instances,
            )
            for (k, layer, s, d, r), b in agg.items()
        ]
        order, safe, peak = self._memory_order(transfers, held, needed, old_placement, kv_tokens, grain, lost_instances)
        rank = {layer: i for i, layer in enumerate(order)}
        transfers.sort(key=lambda t: (rank[t.layer], not t.is_priority, t.kind, t.dst, t.src or t.dst))
        intact = _intact_replicas(
            old_placement, new_placement, {t.dst for t in transfers}, dying_instances | lost_instances
        )
        return MigrationPlan(
            new_config=new_config,
            placement=dict(new_placement),
            transfers=tuple(transfers),
            layer_order=tuple(order),
            kept_bytes=kept,
            kv_replicas=frozenset(r for r in inherits.values() if r not in kv_lost),
            kv_lost_replicas=frozenset(kv_lost),
            intact_replicas=intact,
            is_memory_safe=safe,
            peak_bytes=peak,
            est_s=self.estimate_s(transfers),
            est_params_s=self.estimate_s([t for t in transfers if t.kind != "kv"]),
        )

    def estimate_s(self, transfers: list[Transfer]) -> float:
        """SpotServe's model: busiest instance's inter-instance bytes / network bandwidth + busiest
        intra-instance bytes / intra bandwidth + storage loads / storage bandwidth + a fixed overhead."""
        net_in: dict[str, int] = defaultdict(int)
        net_out: dict[str, int] = defaultdict(int)
        intra: dict[str, int] = defaultdict(int)
        load: dict[str, int] = defaultdict(int)
        for t in transfers:
            if t.src is None:
                load[t.dst.instance_id] += t.num_bytes
            elif t.src.instance_id == t.dst.instance_id:
                intra[t.dst.instance_id] += t.num_bytes
            else:
                net_out[t.src.instance_id] += t.num_bytes
                net_in[t.dst.instance_id] += t.num_bytes
        inst = self.instance
        net = max([*net_in.values(), *net_out.values(), 0])
        return (
            net / inst.network_bytes_per_s
            + max([*intra.values(), 0]) / inst.intra_bytes_per_s
            + max([*load.values(), 0]) / inst.storage_bytes_per_s
            + inst.switch_overhead_s
        )

    def _memory_order(self, transfers, held, needed, old_placement, kv_tokens, grain, lost):
        """Greedy layer order keeping every GPU under its memory: a layer's pieces arrive before
        the GPU frees what it held of that layer and no longer needs (SpotServe `_get_memefi_layer_order`)."""
        layers = sorted({t.layer for t in transfers} | {layer for s in held.values() for layer, _ in s})
        devices = sorted(set(held) | set(needed))
        if not layers or not devices:
            return layers, True, 0
        li = {layer: i for i, layer in enumerate(layers)}
        di = {d: i for i, d in enumerate(devices)}
        recv = np.zeros((len(layers), len(devices)))
        free = np.zeros_like(recv)
        prio = np.zeros(len(layers))
        base = np.zeros(len(devices))
        for t in transfers:
            recv[li[t.layer], di[t.dst]] += t.num_bytes
            prio[li[t.layer]] += t.num_bytes if t.is_priority else 0
        for d, items in held.items():
            pos = old_placement[d]
            kv = kv_tokens.get(pos.replica, 0) * self.memory.kv_bytes_per_token_layer // grain
            for layer, j in items:
                nbytes = self._layer_bytes(layer) // grain + (kv if layer >= 0 else 0)
                base[di[d]] += nbytes
                if (layer, j) not in needed.get(d, ()):
                    free[li[layer], di[d]] += nbytes
        cap = float(self.instance.usable_gpu_bytes)
        current, order, safe = base.copy(), [], True
        peak = float(current.max())
        remaining = list(range(len(layers)))
        while remaining:
            idx = np.array(remaining)
            peaks = (current[None, :] + recv[idx]).max(axis=1)
            fits = peaks <= cap
            if fits.any():
                net_free = (free[idx] - recv[idx]).sum(axis=1)
                key = [(-int(prio[i] > 0), -float(net_free[k]), layers[i]) for k, i in enumerate(idx) if fits[k]]
                pick = int(idx[fits][min(range(len(key)), key=key.__getitem__)])
            else:
                safe = False
                pick = int(idx[int(np.argmin(peaks))])
            peak = max(peak, float((current + recv[pick]).max()))
            current = current + recv[pick] - free[pick]
            order.append(layers[pick])
            remaining.remove(pick)
        return order, safe, int(peak)
