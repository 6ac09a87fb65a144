"""Distillation: the objective's math, and a draft run against an exported teacher."""

from __future__ import annotations

import math

import pytest
import torch
from train_recipes import micro_recipe

from ember.errors import InvalidInputError
from ember.train.config import ModelShape
from ember.train.model_init import build_model
from ember.train.objective import DistillLoss, lm_loss
from ember.train.run import RunOptions, run_training

SHAPE = ModelShape(
    hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, max_position_embeddings=64
)


def _model(seed):
    return build_model(SHAPE, vocab_size=300, bos_token_id=0, eos_token_id=0, seed=seed)


def test_distill_loss_math():
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    labels = ids.roll(-1, dims=1)
    student, teacher = _model(0), _model(1)
    ce = lm_loss(student, ids, labels)
    assert torch.equal(DistillLoss(student, teacher, alpha=0.0, temperature=1.0)(ids, labels), ce)
    # KL to an identical teacher is zero, so any alpha gives (1 - alpha) * CE
    same = DistillLoss(student, _model(0), alpha=0.5, temperature=2.0)(ids, labels)
    assert same.item() == pytest.approx(0.5 * ce.item(), rel=1e-5)
    kl_only = DistillLoss(student, teacher, alpha=1.0, temperature=1.0)(ids, labels)
    assert kl_only.item() > 0 and math.isfinite(kl_only.item())
    kl_only.backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_draft_distills_from_an_exported_teacher(micro_corpus, tmp_path):
    common = {"corpus_root": micro_corpus, "progress": False}
    teacher = run_training(
        micro_recipe(max_steps=3, eval_interval=0), RunOptions(out_dir=tmp_path / "teacher", **common)
    )
    draft = micro_recipe(max_steps=3, eval_interval=0, seed=5, distill_alpha=0.7)
    result = run_training(draft, RunOptions(out_dir=tmp_path / "draft", distill_from=teacher.export_dir, **common))
    assert result.fit.step == 3 and math.isfinite(result.fit.last_eval.loss)
    # a teacher with another tokenizer cannot teach this draft
    other = micro_recipe(max_steps=3, eval_interval=0, vocab_size=300)
    with pytest.raises(InvalidInputError, match="tokenizer differs"):
        run_training(other, RunOptions(out_dir=tmp_path / "other", distill_from=teacher.export_dir, **common))
