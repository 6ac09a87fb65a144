"""N steps straight == N/2 steps, checkpoint, resume in a fresh trainer, N/2 more."""

from __future__ import annotations

import json

import pytest
import torch
from train_recipes import micro_recipe

from ember.errors import InvalidInputError
from ember.train.checkpoint import list_checkpoints, load_checkpoint
from ember.train.run import RunOptions, run_training


def _losses(out_dir):
    lines = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {e["step"]: e["loss"] for e in lines if "loss" in e}


def _final_state(out_dir):
    return load_checkpoint(list_checkpoints(out_dir)[-1])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_is_exact(micro_corpus, tmp_path, precision):
    recipe = micro_recipe(precision=precision, log_interval=1, grad_accum=2)
    common = {"corpus_root": micro_corpus, "progress": False}
    straight = run_training(recipe, RunOptions(out_dir=tmp_path / "a", **common))
    assert straight.fit.step == 8 and straight.fit.stop_reason == "max_steps"

    half = run_training(recipe, RunOptions(out_dir=tmp_path / "b", stop_at_step=4, **common))
    assert half.fit.stop_reason == "stop_at_step" and half.fit.step == 4
    resumed = run_training(recipe, RunOptions(out_dir=tmp_path / "b", resume=True, **common))
    assert resumed.fit.step == 8

    a, b = _final_state(tmp_path / "a"), _final_state(tmp_path / "b")
    assert a["step"] == b["step"] == 8
    assert a["data"] == b["data"] and a["trainer"]["tokens_seen"] == b["trainer"]["tokens_seen"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name  # bitwise
    for key, state in a["optimizer"]["state"].items():
        for field, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][key][field]), (key, field)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 8
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    assert resumed.fit.last_eval == straight.fit.last_eval


def test_resume_guards(micro_corpus, tmp_path):
    recipe = micro_recipe(max_steps=4, eval_interval=0, checkpoint_interval=0)
    options = RunOptions(out_dir=tmp_path / "run", corpus_root=micro_corpus, progress=False)
    with pytest.raises(InvalidInputError, match="no checkpoints"):
        run_training(recipe, RunOptions(**{**options.__dict__, "resume": True}))
    run_training(recipe, options)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-0000004.pt"]
    with pytest.raises(InvalidInputError, match="pass --resume"):
        run_training(recipe, options)
    resume = RunOptions(**{**options.__dict__, "resume": True})
    with pytest.raises(InvalidInputError, match="changed data settings.*seq_len"):
        run_training(recipe.replace_train(seq_len=16), resume)
    # a longer schedule on resume is allowed: the run continues to the new max_steps
    assert run_training(recipe.replace_train(max_steps=6), resume).fit.step == 6


def test_time_budget_stops_cleanly(micro_corpus, tmp_path):
    recipe = micro_recipe(max_steps=100000, warmup_steps=2, eval_interval=0, checkpoint_interval=0)
    result = run_training(
        recipe,
        RunOptions(
            out_dir=tmp_path / "run",
            corpus_root=micro_corpus,
            progress=False,
            max_minutes=0.02,
        ),
    )
    assert result.fit.stop_reason == "time_budget"
    assert 0 < result.fit.step < 100000
    assert list_checkpoints(tmp_path / "run")[-1].name == f"step-{result.fit.step:07d}.pt"
    assert (result.export_dir / "model.safetensors").is_file()
