import json
import shutil
import sysconfig

import pytest

from ember.cli import main
from ember.planner.strategy import LayerStrategy as S
from ember.planner.strategy import Plan
from ember.train.parallel.probe import launch_local


def test_plan_analytic_prints_table_and_saves(tmp_path, capsys):
    out = tmp_path / "plan.json"
    code = main(
        [
            "plan",
            "--analytic",
            "--recipe",
            "ember-tiny",
            "--num-devices",
            "8",
            "--memory-budget",
            "1GiB",
            "--global-batch-sizes",
            "32,64",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "| pure zero3 |" in text and "| searched |" in text
    plan = Plan.load(out)
    assert plan.num_devices == 8 and plan.num_layers == 8
    data = json.loads(out.read_text())
    assert data["prediction"]["peak_memory_bytes"] <= 2**30
    assert {row["name"] for row in data["alternatives"]} >= {"searched", "pure dp", "pure pp"}


def test_plan_errors_are_clear(tmp_path, capsys):
    code = main(
        ["plan", "--analytic", "--num-devices", "4", "--memory-budget", "1KiB", "--out", str(tmp_path / "p.json")]
    )
    assert code == 1 and "no plan fits" in capsys.readouterr().err
    code = main(["plan", "--analytic", "--num-devices", "3", "--out", str(tmp_path / "p.json")])
    assert code == 1 and "num_devices" in capsys.readouterr().err


def test_bench_plan_is_registered(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "plan", "--help"])
    assert "--budgets" in capsys.readouterr().out


def test_train_with_plan_under_two_ranks(tmp_path):
    stdlib = sysconfig.get_paths()["stdlib"]
    corpus = tmp_path / "corpus"
    for name in ("bisect.py", "heapq.py", "textwrap.py", "colorsys.py", "keyword.py"):
        (corpus / "lib").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f"{stdlib}/{name}", corpus / "lib" / name)
    plan = Plan(
        num_devices=2,
        pp=1,
        stage_layers=(2,),
        layers=(S(tp=2), S(dp_type="zero3", checkpoint=True)),
        global_batch_size=4,
        num_micro_batches=2,
    )
    plan.save(tmp_path / "plan.json")
    out = tmp_path / "run"
    logs = launch_local(
        [
            "ember.train",
            "--recipe",
            "ember-debug",
            "--plan",
            str(tmp_path / "plan.json"),
            "--out",
            str(out),
            "--corpus-root",
            str(corpus),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--vocab-size",
            "300",
            "--seq-len",
            "32",
            "--max-steps",
            "4",
            "--warmup-steps",
            "1",
            "--precision",
            "fp32",
            "--no-progress",
        ],
        2,
        timeout_s=600,
    )
    assert "stopped (max_steps) at step 4" in logs[0]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3, 4]
    for rank in range(2):
        report = json.loads((out / "ranks" / f"rank-{rank}.json").read_text())
        assert report["tokens_per_s"] > 0 and report["peak_activation_bytes"] > 0
        assert (out / "checkpoints" / "step-4" / f"rank-{rank}.pt").is_file()
    assert Plan.load(out / "plan.json") == plan
