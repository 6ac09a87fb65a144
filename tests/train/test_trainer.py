"""The step: gradient accumulation is a mean over micro-batches; compile failure falls back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ember.train.config import ModelShape, TrainConfig
from ember.train.data import TrainBatches
from ember.train.model_init import build_model
from ember.train.trainer import Trainer

SHAPE = ModelShape(
    hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64, max_position_embeddings=64
)
# A learnable stream: each token determines the next.
TOKENS = (np.arange(20000) * 7 % 300).astype(np.uint16)


def _trainer(**overrides) -> Trainer:
    config = TrainConfig(**{"seq_len": 16, "max_steps": 10, "warmup_steps": 1, "precision": "fp32", **overrides})
    model = build_model(SHAPE, vocab_size=300, bos_token_id=0, eos_token_id=0, seed=0)
    batches = TrainBatches(TOKENS, seq_len=16, batch_size=config.batch_size, seed=0)
    return Trainer(model, config, batches, [])


def test_gradient_accumulation_matches_one_big_batch():
    big = _trainer(batch_size=4, grad_accum=1)
    small = _trainer(batch_size=2, grad_accum=2)
    a, b = big.train_step(), small.train_step()
    assert a.num_tokens == b.num_tokens == 64
    assert a.loss == pytest.approx(b.loss, rel=1e-5)
    # NOTE: the gradient, not the updated weights: Adam's first step is ~lr * sign(g), which
    # amplifies rounding differences of near-zero gradient entries.
    assert a.grad_norm == pytest.approx(b.grad_norm, rel=1e-5)


def test_loss_decreases_and_clipping_bounds_the_update():
    trainer = _trainer(batch_size=4, lr=1e-2, grad_clip=0.5)
    losses = [trainer.train_step().loss for _ in range(10)]
    assert losses[-1] < losses[0]
    assert trainer.step == 10 and trainer.tokens_seen == 10 * 4 * 16


def test_failed_compile_falls_back_to_eager(monkeypatch):
    def broken_compile(fn):
        def call(*args):
            raise RuntimeError("no C++ compiler")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    trainer = _trainer(batch_size=2, compile=True)
    with pytest.warns(UserWarning, match="torch.compile failed.*no C\\+\\+ compiler"):
        result = trainer.train_step()
    assert np.isfinite(result.loss)
    trainer.train_step()  # eager from now on, no second warning
