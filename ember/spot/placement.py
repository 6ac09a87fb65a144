"""Device mapping: which GPU takes which position of the new configuration.

Kuhn-Munkres max-weight matching (`scipy.optimize.linear_sum_assignment`) between GPUs and
positions, with edge weight = bytes the GPU already holds that the position needs. It is
hierarchical like SpotServe's `tp_group_assign`: positions are cut into slots of
`c = min(tp, gpus_per_instance)` consecutive tensor-parallel ranks of one (replica, stage), and a
slot must live on one instance (tensor parallelism stays on the fast intra-instance links).

- c == 1: one flat KM over GPUs x positions (exact).
- c == gpus_per_instance: inner KM GPUs-of-instance x slot positions gives each
  (instance, slot) edge its weight; an outer KM instances x slots (exact over placements that
  keep slots on one instance).
- 1 < c < gpus_per_instance: each instance offers g/c units; the outer KM uses the inner
  optimum as the edge weight (an upper bound when two slots of one instance want the same GPU),
  then each instance's GPUs are re-matched exactly to the positions of the slots it received.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from ember.spot.config import Device, ParallelConfig, Position

WeightFn = Callable[[Device, Position], float]


def slots_of(config: ParallelConfig, gpus_per_instance: int) -> list[list[Position]]:
    """Positions grouped into slots that must share one instance."""
    c = min(config.tp, gpus_per_instance)
    return [
        [Position(r, b * c + j, p) for j in range(c)]
        for r in range(config.dp)
        for p in range(config.pp)
        for b in range(config.tp // c)
    ]


def _km(weights: np.ndarray) -> tuple[float, list[tuple[int, int]]]:
    """Max-weight matching saturating the smaller side."""
    rows, cols = linear_sum_assignment(weights, maximize=True)
    return float(weights[rows, cols].sum()), list(zip(rows.tolist(), cols.tolist()))


def _weight_matrix(
    devices: Sequence[Device], positions: Sequence[Position], weight: WeightFn, has_state: Callable[[Device], bool]
) -> np.ndarray:
    w = np.zeros((len(devices), len(positions)))
    for i, d in enumerate(devices):
        if has_state(d):
            for j, pos in enumerate(positions):
                w[i, j] = weight(d, pos)
    return w


def match_devices(
    devices_by_instance: Mapping[str, Sequence[Device]],
    config: ParallelConfig,
    gpus_per_instance: int,
    weight: WeightFn,
    has_state: Callable[[Device], bool] = lambda d: True,
) -> dict[Device, Position]:
    """Map GPUs to every position of `config`, maximizing the total `weight`.

    `devices_by_instance` lists the usable GPUs per instance (in a stable order); `has_state`
    says which GPUs may hold reusable state (others have weight 0 everywhere, skipping calls)."""
    slots = slots_of(config, gpus_per_instance)
    c = len(slots[0]) if slots else 1
    instances = list(devices_by_instance)
    units = [(iid, k) for iid in instances for k in range(len(devices_by_instance[iid]) // c)]
    if len(units) < len(slots):
        raise ValueError(f"{config.short()} needs {len(slots)} slots of {c} GPUs; only {len(units)} available")
    if not slots:
        return {}
    if c == 1:
        devices = [d for iid in instances for d in devices_by_instance[iid]]
        positions = [s[0] for s in slots]
        _, pairs = _km(_weight_matrix(devices, positions, weight, has_state))
        return {devices[i]: positions[j] for i, j in pairs}

    inner: dict[str, np.ndarray] = {}  # instance -> GPU x all-positions weight matrix
    flat_positions = [pos for s in slots for pos in s]
    for iid in instances:
        inner[iid] = _weight_matrix(devices_by_instance[iid], flat_positions, weight, has_state)
    outer = np.zeros((len(units), len(slots)))
    for iid in instances:
        block = inner[iid]
        if not block.any():
            continue
        value = [_km(block[:, s * c : (s + 1) * c])[0] for s in range(len(slots))]
        for u, (uid, _) in enumerate(units):
            if uid == iid:
                outer[u] = value
    _, pairs = _km(outer)
    slots_by_instance: dict[str, list[int]] = {}
    for u, s in pairs:
        slots_by_instance.setdefault(units[u][0], []).append(s)
    out: dict[Device, Position] = {}
    for iid, slot_ids in slots_by_instance.items():
        cols = [s * c + j for s in slot_ids for j in range(c)]
        _, sub = _km(inner[iid][:, cols])
        devices = devices_by_instance[iid]
        for i, j in sub:
            out[devices[i]] = flat_positions[cols[j]]
    return out


def rank_order_placement(
    devices_by_instance: Mapping[str, Sequence[Device]], config: ParallelConfig, gpus_per_instance: int
) -> dict[Device, Position]:
    """Fill slots in order with the GPUs in order (what a restart from scratch does)."""
    slots = slots_of(config, gpus_per_instance)
    c = len(slots[0]) if slots else 1
    chunks = [list(devs[k * c : (k + 1) * c]) for devs in devices_by_instance.values() for k in range(len(devs) // c)]
    if len(chunks) < len(slots):
        raise ValueError(f"{config.short()} needs {len(slots)} slots of {c} GPUs; only {len(chunks)} available")
    return {d: pos for slot, chunk in zip(slots, chunks) for d, pos in zip(chunk, slot)}


def total_weight(placement: Mapping[Device, Position], weight: WeightFn) -> float:
    return sum(weight(d, pos) for d, pos in placement.items())
