from __future__ import annotations

import argparse
import json

import pytest

from ember.errors import InvalidInputError
from ember.spot.arrivals import load_arrivals
from ember.spot.cli import register
from ember.spot.experiment import ExperimentConfig, run_experiment
from ember.spot.profile import load_profile
from ember.spot.traces import load_trace, synthetic_trace


@pytest.fixture(scope="module")
def inputs():
    from spot_helpers import DATA

    return (
        load_trace(DATA / "trace_0506_real.txt"),
        load_arrivals(DATA / "query_tpt0.35_cv6_head.txt"),
        load_profile(DATA / "megatron_h6144_profile.json"),
    )


def run(inputs, **kw):
    trace, arrivals, profile = inputs
    cfg = ExperimentConfig(min_world_size=12, required_rate=0.4, **kw)
    return {r.summary.policy: r for r in run_experiment(trace=trace, arrivals=arrivals, profile=profile, config=cfg)}


def test_every_policy_serves_every_request(inputs):
    res = run(inputs)
    n = sum(1 for a in inputs[1] if a.time_s < inputs[0].end_s)
    for r in res.values():
        assert r.summary.num_completed == n and r.summary.num_lost == 0
        assert all(lat > 0 for lat in r.record.latency_s)


def test_spotserve_keeps_progress_baselines_lose_it(inputs):
    res = run(inputs)
    spot = res["spotserve"].summary
    assert spot.restarted_tokens == 0 and spot.resumed_tokens > 0
    assert res["reparallelize"].summary.restarted_tokens > 0
    assert res["ondemand"].summary.spot_instance_hours == 0 and res["ondemand"].summary.num_reconfigurations == 1
    assert res["spotserve"].summary.ondemand_instance_hours == 0


def test_no_grace_period_falls_back_to_recompute(inputs):
    spot = run(inputs, policies=("spotserve",), grace_period_s=0.0)["spotserve"].summary
    assert spot.num_lost == 0 and spot.recomputed_tokens > 0 and spot.restarted_tokens == 0


def test_deterministic(inputs):
    a = run(inputs, policies=("spotserve", "reroute"))
    b = run(inputs, policies=("spotserve", "reroute"))
    assert all(a[p].record.latency_s == b[p].record.latency_s for p in a)


def test_ondemand_mixing_adds_instances_when_spot_is_short(inputs):
    _, arrivals, profile = inputs
    trace = synthetic_trace(initial=2, duration_s=1200, mean_lifetime_s=400, mean_gap_s=600, max_instances=4, seed=1)
    cfg = ExperimentConfig(policies=("spotserve",), min_world_size=12, required_rate=0.4, max_ondemand=4)
    res = run_experiment(trace=trace, arrivals=arrivals, profile=profile, config=cfg)[0]
    assert res.summary.ondemand_instance_hours > 0 and res.summary.num_lost == 0


def _cli(argv):
    parser = argparse.ArgumentParser(prog="ember")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_writes_table_json_and_plot(data_dir, tmp_path, capsys):
    rc = _cli(
        [
            "spot",
            "simulate",
            "--trace",
            str(data_dir / "trace_0304_real.txt"),
            "--arrivals",
            str(data_dir / "query_tpt0.35_cv6_head.txt"),
            "--profile",
            str(data_dir / "megatron_h6144_profile.json"),
            "--policy",
            "all",
            "--min-world-size",
            "12",
            "--required-rate",
            "0.4",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "| spotserve |" in out and "| ondemand |" in out
    payload = json.loads((tmp_path / "results.json").read_text())
    assert [r["policy"] for r in payload["results"]] == ["spotserve", "reparallelize", "reroute", "ondemand"]
    assert (tmp_path / "latency.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_dtype_and_host_pool(data_dir, tmp_path):
    argv = ["spot", "simulate", "--trace", str(data_dir / "trace_0304_real.txt")]
    argv += ["--arrivals", str(data_dir / "query_tpt0.35_cv6_head.txt")]
    argv += ["--profile", str(data_dir / "megatron_h6144_profile.json"), "--min-world-size", "12"]
    argv += ["--required-rate", "0.4", "--policy", "spotserve,reroute", "--out", str(tmp_path)]
    assert _cli([*argv, "--dtype", "fp32", "--host-pool", "10"]) == 0
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["config"]["bytes_per_value"] == 4 and payload["config"]["host_pool"] == 10
    assert payload["config"]["instance"]["spot_price_per_hour"] == 1.9046


@pytest.mark.parametrize(
    "override,match",
    [
        ({"--trace": "/no/such/trace"}, "not found"),
        ({"--policy": "magic"}, "unknown policy"),
        ({"--arrivals": "gamma:1"}, "gamma:RATE:CV"),
    ],
)
def test_cli_user_errors(data_dir, tmp_path, override, match):
    args = {
        "--trace": str(data_dir / "trace_0304_real.txt"),
        "--arrivals": "poisson:0.3",
        "--profile": str(data_dir / "megatron_6.7B_profile.json"),
        "--out": str(tmp_path),
    } | override
    with pytest.raises(InvalidInputError, match=match):
        _cli(["spot", "simulate", *[x for kv in args.items() for x in kv]])


def test_cli_bad_trace_line(data_dir, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("0,add,node1\n1000,vanish,node1\n")
    with pytest.raises(InvalidInputError, match="bad.csv:2"):
        _cli(
            [
                "spot",
                "simulate",
                "--trace",
                str(bad),
                "--arrivals",
                "poisson:0.3",
                "--profile",
                str(data_dir / "megatron_6.7B_profile.json"),
                "--out",
                str(tmp_path),
            ]
        )


def test_shared_full_trace_loads(shared_spotserve):
    trace = load_trace(shared_spotserve / "trace" / "trace_full" / "g4dn.csv")
    assert trace.max_instances >= 20 and trace.end_s > 10 * 3600
