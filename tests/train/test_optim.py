"""Optimizer groups, the warmup + cosine schedule, and seeded initialization."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ember.train.config import ModelShape, TrainConfig
from ember.train.model_init import build_model
from ember.train.optim import build_optimizer, build_scheduler, lr_factor

SHAPE = ModelShape(
    hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64, max_position_embeddings=64
)


def _model(seed=0):
    return build_model(SHAPE, vocab_size=300, bos_token_id=0, eos_token_id=0, seed=seed)


def test_weight_decay_on_matrices_only():
    model = _model()
    optimizer = build_optimizer(model, TrainConfig(weight_decay=0.1))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["params"]
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_schedule_warmup_then_cosine_to_floor():
    config = TrainConfig(max_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    factors = [lr_factor(step, config) for step in range(120)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))  # non-increasing after warmup
    assert factors[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factors[100] == pytest.approx(0.1) and factors[119] == pytest.approx(0.1)
    optimizer = build_optimizer(_model(), TrainConfig(lr=1e-3, max_steps=100, warmup_steps=10))
    scheduler = build_scheduler(optimizer, TrainConfig(lr=1e-3, max_steps=100, warmup_steps=10))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-4)


def test_init_is_seeded_and_scaled():
    a, b, c = _model(0), _model(0), _model(1)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        if pa.dim() == 2:
            assert not torch.equal(pa, pc), name
    params = dict(a.named_parameters())
    assert torch.all(params["model.norm.weight"] == 1)
    embed_std = params["model.embed_tokens.weight"].std().item()
    down_std = params["model.layers.0.mlp.down_proj.weight"].std().item()
    assert embed_std == pytest.approx(0.02, rel=0.1)
    assert down_std == pytest.approx(0.02 / math.sqrt(4), rel=0.1)
