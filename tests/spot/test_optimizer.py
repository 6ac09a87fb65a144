from __future__ import annotations

import pytest
from spot_helpers import instance, tiny_memory, tiny_profile

from ember.errors import InvalidInputError
from ember.spot.config import ParallelConfig
from ember.spot.hardware import GIB
from ember.spot.optimizer import OptimizerConfig, ParallelOptimizer
from ember.spot.profile import load_profile


def make(num_gpus_per_instance=1, memory_gib=16.0, **cfg):
    inst = instance(gpus_per_instance=num_gpus_per_instance, gpu_memory_gib=memory_gib, usable_memory_fraction=1.0)
    return ParallelOptimizer(
        tiny_profile(), tiny_memory(), inst, OptimizerConfig(output_len=10, input_len=8, max_batch_size=2, **cfg)
    )


def test_batch_latency_matches_hand_computation():
    p = tiny_profile()
    # tp1 pp1 bsz1: t1 = 10*4 = 40, t2 = 1*4 = 4, lat = 40 + 10*4 + 2*0.5 = 81 ms
    assert p.batch_latency(tp=1, pp=1, batch_size=1).duration_s(10) == pytest.approx(0.081)
    # tp2 pp2 bsz2 M1=2 M2=1: t1 = 6*2*(3/2) + 2/2*1 = 19; t2 = 0.7*2*2 + 0.1*1 = 2.9; +2*0.6
    lat = p.batch_latency(tp=2, pp=2, batch_size=2, prefill_micro=2, decode_micro=1)
    assert lat.prefill_s == pytest.approx(0.019) and lat.step_s == pytest.approx(0.0029)
    assert lat.duration_s(10) == pytest.approx(0.0492)


def test_real_profile_loads_and_matches_spotserve_formula(data_dir):
    p = load_profile(data_dir / "megatron_h6144_profile.json")
    assert (p.num_layers, p.num_padded_layers, p.max_tp) == (44, 48, 8)
    # tp4 pp3 bsz4 M1=4 M2=1: ceil(44/3)=15 layers; f=1.1
    t1 = 37.562 * 15 * (3 + 4 - 1) / 4 + 7.0 / 4 * 2
    t2 = 2.13 * 15 * 3 + 0.1 * 2
    want = 1.1 * (t1 + 128 * t2 + 2 * 0.607) / 1000
    got = p.batch_latency(tp=4, pp=3, batch_size=4, prefill_micro=4, decode_micro=1).duration_s(128)
    assert got == pytest.approx(want)


def test_min_latency_subject_to_rate_else_max_throughput():
    opt = make()
    # 1 GPU: b1 -> 81 ms (12.3 req/s); b2 M1=2 M2=1 -> 40 + 48 + 1.2 = 89.2 ms (22.4 req/s)
    low = opt.choose(1, 10.0)
    assert low.config == ParallelConfig(dp=1, tp=1, pp=1, batch_size=1)
    assert low.latency_s == pytest.approx(0.081)
    mid = opt.choose(1, 20.0)
    assert mid.config == ParallelConfig(dp=1, tp=1, pp=1, batch_size=2, prefill_micro=2, decode_micro=1)
    assert mid.latency_s == pytest.approx(0.0892)
    assert opt.choose(1, 1000.0) == mid  # nothing reaches it: most throughput


def test_candidates_respect_layers_world_size_and_memory():
    opt = make()
    shapes = {c.config.shape for c in opt.candidates(6)}
    assert all(4 % pp == 0 for _, pp in shapes)  # padded layers split evenly: no pp=3
    assert all(c.config.dp == 6 // c.config.gpus_per_replica for c in opt.candidates(6))
    assert all(tp * pp >= 4 for tp, pp in {c.config.shape for c in make(min_world_size=4).candidates(8)})
    # weights 4*12*64^2*2 + 2*1000*64*2 = 649,216 B: tp1 does not fit in 0.5 MB, tp2 does
    small = make(memory_gib=0.5e6 / GIB)
    tps = {c.config.tp for c in small.candidates(2) if c.config.pp == 1}
    assert tps == {2}


def test_fixed_shape_and_ondemand_count():
    opt = make()
    assert all(c.config.shape == (2, 1) for c in opt.candidates(4, shape=(2, 1)))
    choice = opt.choose_with_ondemand(0, 10.0, max_ondemand=3)
    assert choice.num_ondemand == 1 and choice.candidate.throughput >= 10.0
    assert opt.choose_with_ondemand(2, 10.0, max_ondemand=3).num_ondemand == 0
    assert opt.min_instances_for(40.0) == 2


def test_paper_model_min_world_size(data_dir):
    p = load_profile(data_dir / "megatron_h6144_profile.json")
    from ember.spot.hardware import InstanceSpec, ModelMemory

    opt = ParallelOptimizer(
        p, ModelMemory(num_layers=44, hidden_size=6144), InstanceSpec(), OptimizerConfig(min_world_size=12)
    )
    assert opt.choose(8, 0.4) is None
    best = opt.choose(28, 0.4)
    assert best.config.num_gpus <= 28 and best.config.gpus_per_replica >= 12 and best.throughput >= 0.4


def test_config_validation_names_field():
    with pytest.raises(ValueError, match="tp"):
        ParallelConfig(dp=1, tp=3, pp=1, batch_size=1)
    with pytest.raises(ValueError, match="decode_micro"):
        ParallelConfig(dp=1, tp=1, pp=1, batch_size=2, decode_micro=4)
    with pytest.raises(ValueError, match="min_world_size"):
        OptimizerConfig(min_world_size=0)


def test_profile_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="not found"):
        load_profile(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"layer_num": 4}')
    with pytest.raises(InvalidInputError):
        load_profile(bad)
