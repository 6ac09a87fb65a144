"""`ember train`: user errors are one clear line and exit status 1, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ember.cli import main

MICRO = [
    "--recipe",
    "ember-debug",
    "--seq-len",
    "32",
    "--batch-size",
    "2",
    "--vocab-size",
    "320",
    "--val-fraction",
    "0.3",
    "--eval-tokens",
    "256",
    "--no-progress",
]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--recipe", "nope", "--out", "x"], "unknown recipe 'nope'; known: ember-tiny"),
        (["--recipe", "ember-debug"], "--out is required"),
        (["--out", "x", "--lr", "abc"], "--lr must be a number, got 'abc'"),
        (["--out", "x", "--max-steps", "1.5"], "--max-steps must be an integer"),
        (["--out", "x", "--lr", "-1"], "lr=-1.0 must be positive"),
        (["--out", "x", "--precision", "fp8"], "precision='fp8' is not one of"),
        (["--out", "x", "--warmup-steps", "5000", "--max-steps", "10"], "warmup_steps=5000"),
        (["--out", "x", "--seq-len", "4096"], "seq_len=4096 exceeds max_position_embeddings"),
        (["--out", "x", "--max-minutes", "0"], "max_minutes=0.0 must be positive"),
        (["--out", "x", "--max-minutes", "soon"], "--max-minutes must be a number"),
        (["--out", "x", "--distill-from", "/no/such/dir"], "--distill-from /no/such/dir: no such"),
        (["--out", "x", "--corpus-root", "/no/such/dir"], "corpus root '/no/such/dir' is not a"),
        (["--out", "x", "--tokenizer", "/no/such/dir"], "no tokenizer.json or tokenizer_config"),
        (["--out", "x", "--stop-at-step", "0"], "stop_at_step=0 must be at least 1"),
    ],
)
def test_bad_arguments_exit_1_with_a_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ember train: error: ") and message in err
    assert "Traceback" not in err


def test_out_dir_guards(micro_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", *MICRO, "--corpus-root", str(micro_corpus), "--out", str(out)]
    assert main([*argv, "--resume"]) == 1
    assert "--resume: no checkpoints" in capsys.readouterr().err
    assert main([*argv, "--max-steps", "3", "--warmup-steps", "1"]) == 0
    captured = capsys.readouterr()
    assert "stopped (max_steps) at step 3" in captured.out and "exported to" in captured.out
    assert main([*argv, "--max-steps", "3", "--warmup-steps", "1"]) == 1
    assert "pass --resume" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["train", *MICRO, "--corpus-root", str(micro_corpus), "--out", str(tmp_path / "file")]) == 1
    assert "is not a directory" in capsys.readouterr().err


def test_list_recipes_and_prepare_only(micro_corpus, capsys):
    assert main(["train", "--list-recipes"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("ember-tiny", "ember-draft-a", "ember-draft-b"))
    assert main(["train", *MICRO, "--corpus-root", str(micro_corpus), "--prepare-only"]) == 0
    assert '"bytes_per_token"' in capsys.readouterr().out


def test_python_dash_m_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "ember.train", "--out", "x", "--batch-size", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert "batch_size=0 must be positive" in proc.stderr and "Traceback" not in proc.stderr
