"""Kuhn-Munkres device mapping against brute force."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ember.spot.config import Device, ParallelConfig, Position, positions_of
from ember.spot.placement import match_devices, rank_order_placement, slots_of, total_weight


def devices(num_instances: int, g: int) -> dict[str, list[Device]]:
    return {f"i{k}": [Device(f"i{k}", j) for j in range(g)] for k in range(num_instances)}


def weight_from(matrix: np.ndarray, devs: list[Device], positions: list[Position]):
    di = {d: i for i, d in enumerate(devs)}
    pi = {p: j for j, p in enumerate(positions)}
    return lambda d, p: float(matrix[di[d], pi[p]])


def brute_force(by_inst, config, g, weight) -> float:
    """Best total over every bijection that keeps each slot on one instance."""
    devs = [d for ds in by_inst.values() for d in ds]
    slots = slots_of(config, g)
    best = -1.0
    for perm in itertools.permutations(devs, sum(len(s) for s in slots)):
        assign, k, ok = {}, 0, True
        for slot in slots:
            chunk = perm[k : k + len(slot)]
            k += len(slot)
            if len({d.instance_id for d in chunk}) != 1:
                ok = False
                break
            assign.update(zip(chunk, slot))
        if ok:
            best = max(best, total_weight({d: p for d, p in assign.items()}, weight))
    return best


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_flat_km_equals_brute_force(seed):
    # tp=1: every GPU is its own slot; 5 GPUs for 4 positions
    rng = np.random.default_rng(seed)
    by_inst = devices(5, 1)
    config = ParallelConfig(dp=2, tp=1, pp=2, batch_size=1)
    devs, pos = [d for ds in by_inst.values() for d in ds], positions_of(config)
    w = weight_from(rng.integers(0, 20, (len(devs), len(pos))), devs, pos)
    got = match_devices(by_inst, config, 1, w)
    assert sorted(got.values()) == sorted(pos) and len(set(got)) == len(got)
    assert total_weight(got, w) == brute_force(by_inst, config, 1, w)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_hierarchical_km_equals_brute_force_when_slot_is_instance(seed):
    # tp = gpus_per_instance = 2: inner KM per (instance, slot), outer KM over instances
    rng = np.random.default_rng(seed)
    by_inst = devices(3, 2)
    config = ParallelConfig(dp=1, tp=2, pp=2, batch_size=1)
    devs, pos = [d for ds in by_inst.values() for d in ds], positions_of(config)
    w = weight_from(rng.integers(0, 20, (len(devs), len(pos))), devs, pos)
    got = match_devices(by_inst, config, 2, w)
    for slot in slots_of(config, 2):  # locality: a slot lives on one instance
        assert len({d.instance_id for d, p in got.items() if p in slot}) == 1
    assert total_weight(got, w) == brute_force(by_inst, config, 2, w)


def test_partial_slots_are_bounded_by_brute_force_and_beat_fixed_clusters():
    # tp=2 on 4-GPU instances (1 < c < g): heuristic, never above the optimum, never below rank order
    rng = np.random.default_rng(0)
    by_inst = devices(2, 4)
    config = ParallelConfig(dp=2, tp=2, pp=1, batch_size=1)
    devs, pos = [d for ds in by_inst.values() for d in ds], positions_of(config)
    for _ in range(3):
        w = weight_from(rng.integers(0, 20, (len(devs), len(pos))), devs, pos)
        got = total_weight(match_devices(by_inst, config, 4, w), w)
        assert total_weight(rank_order_placement(by_inst, config, 4), w) <= got <= brute_force(by_inst, config, 4, w)


def test_zero_weight_gpus_fill_remaining_slots():
    by_inst = devices(3, 2)
    config = ParallelConfig(dp=2, tp=2, pp=1, batch_size=1)
    # only instance i2 has useful state, for replica 1
    w = lambda d, p: 5.0 if (d.instance_id == "i2" and p.replica == 1) else 0.0  # noqa: E731
    got = match_devices(by_inst, config, 2, w)
    assert {p.replica for d, p in got.items() if d.instance_id == "i2"} == {1}
    assert len(got) == 4
