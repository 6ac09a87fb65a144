"""`ember bench serve` against the shared server: every request of every workload completes,
the numbers are consistent, and the JSON / markdown / PNG are written."""

import asyncio
import json
import math

from server_util import MODEL_NAME, wait_idle

from ember.bench.serving import SLO, LoadConfig, run_load, summarize
from ember.bench.workloads import make_workload
from ember.cli import main


def test_load_generator_measures_every_request(server, http):
    workload = make_workload("multi-turn", 6, vocab_size=384, num_turns=3, input_len=16, output_len=8)
    load = LoadConfig(request_rate=50.0, max_concurrency=4, seed=1)
    results, duration = asyncio.run(run_load(server.url, MODEL_NAME, workload, load, progress=False))
    assert len(results) == 6 and all(r.ok for r in results), [r.error for r in results]
    by_id = {r.request_id: r for r in results}
    for request in workload.requests:
        result = by_id[request.request_id]
        assert result.num_output_tokens == request.max_tokens  # ignore_eos: exact lengths
        assert 0 < result.ttft_s <= result.e2e_s <= duration
    summary = summarize(results, duration, SLO(ttft_ms=1e9, tpot_ms=1e9))
    assert summary["completed"] == 6 and summary["failed"] == 0
    assert summary["goodput"] == summary["request_throughput"]
    assert summary["p50_ttft_ms"] <= summary["p99_ttft_ms"] and summary["mean_tpot_ms"] > 0
    assert summarize(results, duration, SLO(ttft_ms=0.0))["goodput"] == 0
    wait_idle(http)


def test_bench_serve_command_writes_json_markdown_and_png(server, tmp_path, capsys):
    out = tmp_path / "serving"
    status = main(
        [
            "bench",
            "serve",
            "--base-url",
            server.url,
            "--workload",
            "random,agent",
            "--num-requests",
            "4",
            "--request-rate",
            "20,inf",
            "--input-len",
            "16",
            "--output-len",
            "4",
            "--system-len",
            "32",
            "--num-turns",
            "2",
            "--vocab-size",
            "384",
            "--slo-ttft-ms",
            "60000",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    payload = json.loads(out.with_suffix(".json").read_text())
    rows = payload["results"]
    assert [(r["workload"], r["request_rate"]) for r in rows] == [
        ("random", 20.0),
        ("random", math.inf),
        ("agent", 20.0),
        ("agent", math.inf),
    ]
    assert all(r["completed"] == 4 and r["failed"] == 0 for r in rows)
    assert "prefix_hit_rate" in rows[-1] and payload["machine"]["cpu_threads"] >= 1
    assert out.with_suffix(".md").read_text().count("\n| ") >= 5
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "p99_ttft_ms" in capsys.readouterr().out
