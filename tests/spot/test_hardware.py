"""Instance prices and the model's byte counts."""

from __future__ import annotations

import pytest

from ember.spot.hardware import InstanceSpec, ModelMemory
from ember.spot.results import RunRecord, summarize


def test_prices_are_the_artifacts():
    # Hsword/SpotServe@832b29f elastic-switch/scripts_ae/tradeoff_plot.py:25-26
    spec = InstanceSpec()
    assert spec.spot_price_per_hour == 1.9046
    assert spec.ondemand_price_per_hour == 3.912


def test_cost_bills_the_default_prices():
    rec = RunRecord(policy="spotserve", spans=[("a", 0.0, 3600.0, False), ("od0", 0.0, 1800.0, True)], end_s=3600.0)
    spec = InstanceSpec()
    s = summarize(
        rec, spot_price_per_hour=spec.spot_price_per_hour, ondemand_price_per_hour=spec.ondemand_price_per_hour
    )
    assert s.cost_usd == pytest.approx(1.9046 + 0.5 * 3.912)


def test_fp32_doubles_every_byte_count():
    fp16 = ModelMemory(num_layers=44, hidden_size=6144)
    fp32 = ModelMemory(num_layers=44, hidden_size=6144, bytes_per_value=4)
    assert fp16.bytes_per_value == 2  # Ember serves fp16
    for name in ("layer_bytes", "embed_bytes", "kv_bytes_per_token_layer", "total_param_bytes"):
        assert getattr(fp32, name) == 2 * getattr(fp16, name)
    assert fp32.weight_bytes_per_gpu(4, 3) == 2 * fp16.weight_bytes_per_gpu(4, 3)
    assert fp32.kv_bytes_per_gpu(4, 3, 640) == 2 * fp16.kv_bytes_per_gpu(4, 3, 640)


def test_element_size_must_be_positive():
    with pytest.raises(ValueError, match="bytes_per_value"):
        ModelMemory(num_layers=4, hidden_size=64, bytes_per_value=0)
