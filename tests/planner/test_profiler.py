import time

import pytest

from ember.planner.cost_model import CostModel
from ember.planner.profiler import ProfileSpec, fit_link, monotone_curve, profile
from ember.planner.search import SearchSpace, search
from ember.train.config import ModelShape


def test_fit_link_and_monotone_curve():
    link = fit_link([(0, 1.0), (10, 2.0), (20, 3.0)])
    assert link.latency_s == pytest.approx(1.0) and link.seconds_per_byte == pytest.approx(0.1)
    assert fit_link([(1, 2.0), (2, 1.0)]).seconds_per_byte == 0.0  # never negative
    assert monotone_curve([1, 2, 4], [3.0, 2.0, 5.0]).ys == (3.0, 3.0, 5.0)


def test_profile_measures_caches_and_feeds_the_search(tmp_path, capsys):
    shape = ModelShape(
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    )
    spec = ProfileSpec(
        name="tiny",
        shape=shape,
        vocab_size=64,
        seq_len=16,
        max_devices=2,
        batch_sizes=(1, 2),
        message_bytes=(4096, 65536),
        repeats=1,
    )
    model, hw = profile(spec, cache_dir=tmp_path)
    err = capsys.readouterr().err
    assert "profile [1/3] collectives" in err and "profile [3/3] layer tp=2" in err
    assert model.layer.tp_degrees == (1, 2) and model.layer.measured_with_tp
    assert model.layer.num_params == 4 * 32 * 32 - 2 * 32 * 16 + 3 * 32 * 64 + 64
    assert all(c.ys[-1] > 0 for c in model.layer.forward_s.values())
    assert model.layer.activation_bytes[1](2) > model.layer.activation_bytes[1](1) > 0
    assert set(hw.links) == {"all_reduce", "all_gather", "reduce_scatter", "p2p"}
    assert hw.compute_slowdown[1] == 1.0 and 2 in hw.compute_slowdown
    start = time.perf_counter()
    again = profile(spec, cache_dir=tmp_path)
    assert time.perf_counter() - start < 5 and again == (model, hw)
    result = search(CostModel(model, hw), SearchSpace(num_devices=2, memory_budget_bytes=1e9, global_batch_sizes=(4,)))
    assert result.plan is not None and result.cost.iteration_s > 0
