"""Migration plans on hand-computed cases."""

from __future__ import annotations

import pytest

from ember.spot.config import Device, ParallelConfig, Position
from ember.spot.hardware import InstanceSpec, ModelMemory
from ember.spot.migration import EMBED_IN, MigrationPlanner
from ember.spot.placement import match_devices

MEM = ModelMemory(num_layers=4, hidden_size=64, vocab_size=1000)
LB, EB = MEM.layer_bytes, MEM.embed_bytes


def planner(**kw) -> MigrationPlanner:
    return MigrationPlanner(MEM, InstanceSpec(**kw))


def cfg(dp, tp, pp):
    return ParallelConfig(dp=dp, tp=tp, pp=pp, batch_size=1)


def gpus(iid, n=4):
    return [Device(iid, k) for k in range(n)]


def mapped(pl, old_cfg, old_place, new_cfg, by_inst, g=4, kv=None, rmap=None, lost=frozenset()):
    kv, rmap = kv or {}, rmap or {}
    w = lambda d, p: pl.reusable_bytes(old_place[d], old_cfg, p, new_cfg, kv_tokens=kv, replica_map=rmap)  # noqa: E731
    return match_devices(by_inst, new_cfg, g, w, has_state=lambda d: d in old_place and d.instance_id not in lost)


def test_unchanged_configuration_moves_nothing():
    pl = planner()
    old = cfg(1, 4, 1)
    place = {d: Position(0, d.local_rank, 0) for d in gpus("a")}
    plan = pl.plan(
        old_config=old,
        old_placement=place,
        new_config=old,
        new_placement=mapped(pl, old, place, old, {"a": gpus("a")}),
        kv_tokens={},
        replica_map={},
    )
    assert plan.transfers == () and plan.kept_bytes == 4 * LB + 2 * EB
    assert plan.est_s == pytest.approx(InstanceSpec().switch_overhead_s)


def test_tp4_to_tp2_pp2_inside_one_instance_keeps_what_it_can():
    # old: one replica tp4 on GPUs a0..a3 (GPU t holds slice t/4 of every layer and both embeddings)
    # new: tp2 x pp2 on the same GPUs. A GPU can keep only its quarter of its new stage's
    # two layers and one embedding: kept = 4 * (2 LB + EB) / 4; the other half arrives over PCIe.
    pl = planner()
    old, new = cfg(1, 4, 1), cfg(1, 2, 2)
    place = {d: Position(0, d.local_rank, 0) for d in gpus("a")}
    new_place = mapped(pl, old, place, new, {"a": gpus("a")})
    plan = pl.plan(
        old_config=old, old_placement=place, new_config=new, new_placement=new_place, kv_tokens={}, replica_map={}
    )
    assert plan.kept_bytes == 2 * LB + EB
    assert plan.moved_bytes == 2 * LB + EB and plan.loaded_bytes == 0
    assert all(t.src.instance_id == t.dst.instance_id == "a" for t in plan.transfers)
    # every GPU kept its own slice: GPU t took new tp rank t // 2
    assert all(p.tp_rank == d.local_rank // 2 for d, p in new_place.items())


def test_tp4_to_dp2_tp2_keeps_one_quarter_per_gpu():
    pl = planner()
    old, new = cfg(1, 4, 1), cfg(2, 2, 1)
    place = {d: Position(0, d.local_rank, 0) for d in gpus("a")}
    plan = pl.plan(
        old_config=old,
        old_placement=place,
        new_config=new,
        new_placement=mapped(pl, old, place, new, {"a": gpus("a")}),
        kv_tokens={},
        replica_map={},
    )
    assert plan.kept_bytes == 4 * LB + 2 * EB and plan.moved_bytes == 4 * LB + 2 * EB


def test_kv_moves_only_inside_its_replica_and_dying_sends_first():
    pl = planner()
    old, new = cfg(2, 1, 1), cfg(2, 1, 1)
    a, b, c = Device("a", 0), Device("b", 0), Device("c", 0)
    place = {a: Position(0, 0, 0), b: Position(1, 0, 0)}
    kv = {0: 100, 1: 100}
    rmap = {0: 1, 1: 0}  # new replica 0 inherits old replica 1 (on b, dying)
    by_inst = {"a": [a], "c": [c]}
    new_place = mapped(pl, old, place, new, by_inst, g=1, kv=kv, rmap=rmap)
    assert new_place[a] == Position(1, 0, 0)  # a keeps its own KV: it takes the replica that inherits it
    plan = pl.plan(
        old_config=old,
        old_placement=place,
        new_config=new,
        new_placement=new_place,
        kv_tokens=kv,
        replica_map=rmap,
        dying_instances=frozenset({"b"}),
    )
    kv_moves = [t for t in plan.transfers if t.kind == "kv"]
    assert kv_moves and all(t.src == b and t.dst == c and t.is_priority and t.old_replica == 1 for t in kv_moves)
    assert sum(t.num_bytes for t in kv_moves) == 4 * 100 * MEM.kv_bytes_per_token_layer
    assert plan.kv_replicas == {0, 1} and not plan.kv_lost_replicas
    assert plan.transfers[0].is_priority  # dying sources go first
    assert plan.est_s > plan.est_params_s


def test_lost_gpu_loses_its_kv_and_weights_come_from_survivors_or_storage():
    pl = planner()
    old, new = cfg(2, 1, 1), cfg(2, 1, 1)
    a, b, c = Device("a", 0), Device("b", 0), Device("c", 0)
    place = {a: Position(0, 0, 0), b: Position(1, 0, 0)}
    kv, rmap = {0: 100, 1: 100}, {0: 1, 1: 0}
    new_place = {a: Position(1, 0, 0), c: Position(0, 0, 0)}
    plan = pl.plan(
        old_config=old,
        old_placement=place,
        new_config=new,
        new_placement=new_place,
        kv_tokens=kv,
        replica_map=rmap,
        lost_instances=frozenset({"b"}),
    )
    assert plan.kv_lost_replicas == {1} and plan.kv_replicas == {0}
    assert not [t for t in plan.transfers if t.kind == "kv"]
    assert all(t.src == a for t in plan.transfers)  # weights from the survivor
    fresh = pl.plan(
        old_config=None, old_placement={}, new_config=new, new_placement=new_place, kv_tokens={}, replica_map={}
    )
    assert fresh.loaded_bytes == 2 * (4 * LB + 2 * EB) and fresh.moved_bytes == 0


def test_estimate_uses_busiest_link():
    pl = planner(network_gbps=8.0, switch_overhead_s=0.5)  # 1 GB/s
    old, new = cfg(1, 1, 1), cfg(2, 1, 1)
    a, b = Device("a", 0), Device("b", 0)
    plan = pl.plan(
        old_config=old,
        old_placement={a: Position(0, 0, 0)},
        new_config=new,
        new_placement={a: Position(0, 0, 0), b: Position(1, 0, 0)},
        kv_tokens={},
        replica_map={},
    )
    assert plan.moved_bytes == 4 * LB + 2 * EB
    assert plan.est_s == pytest.approx(plan.moved_bytes / 1e9 + 0.5)


def test_memory_order_flags_unsafe_when_gpu_cannot_hold_old_and_new():
    old, new = cfg(1, 1, 2), cfg(1, 1, 2)
    a, b = Device("a", 0), Device("b", 0)
    place = {a: Position(0, 0, 0), b: Position(0, 0, 1)}
    swap = {a: Position(0, 0, 1), b: Position(0, 0, 0)}
    roomy = planner().plan(
        old_config=old, old_placement=place, new_config=new, new_placement=swap, kv_tokens={}, replica_map={}
    )
    assert roomy.is_memory_safe and set(roomy.layer_order) == {0, 1, 2, 3, EMBED_IN, -2}
    stage = 2 * LB + EB
    tight = MigrationPlanner(MEM, InstanceSpec(gpu_memory_gib=(stage + LB // 2) / 2**30, usable_memory_fraction=1.0))
    plan = tight.plan(
        old_config=old, old_placement=place, new_config=new, new_placement=swap, kv_tokens={}, replica_map={}
    )
    assert not plan.is_memory_safe and plan.peak_bytes > tight.instance.usable_gpu_bytes


def test_bytes_scale_with_the_element_size():
    # Ember serves fp16 (2 bytes); the SpotServe artifact counts fp32 (4). Same plan, every
    # transfer and the kept state twice the bytes, so the transfer time (less the fixed
    # overhead) doubles too.
    old, new = cfg(2, 1, 1), cfg(2, 2, 1)
    a, b, c = Device("a", 0), Device("b", 0), Device("c", 0)
    place = {a: Position(0, 0, 0), b: Position(1, 0, 0)}
    new_place = {a: Position(1, 0, 0), c: Position(1, 1, 0), b: Position(0, 0, 0), Device("d", 0): Position(0, 1, 0)}
    plans = {}
    for nbytes in (2, 4):
        mem = ModelMemory(num_layers=4, hidden_size=64, vocab_size=1000, bytes_per_value=nbytes)
        pl = MigrationPlanner(mem, InstanceSpec(network_gbps=1.0, switch_overhead_s=0.5))
        plans[nbytes] = pl.plan(
            old_config=old,
            old_placement=place,
            new_config=new,
            new_placement=new_place,
            kv_tokens={0: 100, 1: 100},
            replica_map={0: 1, 1: 0},
            dying_instances=frozenset({"b"}),
        )
    fp16, fp32 = plans[2], plans[4]
    assert fp16.moved_bytes > 0 and {t.kind for t in fp16.transfers} >= {"param", "kv"}
    key = lambda t: (t.kind, t.layer, t.src, t.dst)  # noqa: E731
    assert [key(t) for t in fp32.transfers] == [key(t) for t in fp16.transfers]
    assert [t.num_bytes for t in fp32.transfers] == [2 * t.num_bytes for t in fp16.transfers]
    assert fp32.kept_bytes == 2 * fp16.kept_bytes and fp32.moved_bytes == 2 * fp16.moved_bytes
    assert fp32.est_s - 0.5 == pytest.approx(2 * (fp16.est_s - 0.5))
    assert fp32.est_params_s - 0.5 == pytest.approx(2 * (fp16.est_params_s - 0.5))
