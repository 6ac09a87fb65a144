"""SpotServe live: instances on a local Ray cluster get notices and die while a workload is
streamed through the router. Nothing is lost, and every output is token-identical to an
uninterrupted one-engine run: after a move with KV (notice), and after recovery from
checkpoints (a node that dies with no notice).

Ray runs in a loopback-only network namespace (``unshare -n``), in a subprocess; the oracle
runs here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from chaos_scenario import workload

from ember.engine.llm import LLM

HERE = Path(__file__).parent

SPEC = {
    # i3 arrives at 10 s; i1 gets a notice at 25 s (gone at 55 s), so its replica's batch moves
    # to a replica on i3; 2 s after that move the host of the busiest replica dies
    # with no notice. One device per instance, tp = 1 (on two cores the replicas' rank
    # processes would starve each other; moves between layouts, with KV, are tested in
    # tests/distributed/test_tp_migration.py).
    "events": [[0, "add", ["i0", "i1", "i2"]], [10, "add", ["i3"]], [55, "remove", ["i1"]]],
    "end_s": 300,
    "grace_s": 30,
    "instance_ids": ["i0", "i1", "i2", "i3"],
    "num_requests": 48,
    "max_tokens": 300,
    "kills": [[2, "@host", "move"]],
    "deployment": {"max_tp": 1},
}


def ray_processes() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "raylet|gcs_server"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def run_scenario(spec: dict) -> dict:
    before = ray_processes()
    command = f"ip link set lo up; exec {sys.executable} {HERE / 'chaos_scenario.py'} '{json.dumps(spec)}'"
    done = subprocess.run(["unshare", "-n", "sh", "-c", command], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    assert ray_processes() <= before, "Ray processes left behind"
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


@pytest.fixture(scope="module")
def oracle():
    requests = workload(SPEC["num_requests"], SPEC["max_tokens"])
    with LLM(model="ember-tiny", latency_model="analytic") as llm:
        outputs = llm.generate([r.prompt for r in requests], [r.params for r in requests])
    return {r.request_id: [c.token_ids for c in o.outputs] for r, o in zip(requests, outputs)}


# NOTE: opt-in until its timing is deterministic: on two busy cores it failed 1 run in 4 (in
# CI), with nothing lost and every token right, on an assertion about when things happened.
@pytest.mark.skipif(os.environ.get("EMBER_LIVE_CHAOS") != "1", reason="set EMBER_LIVE_CHAOS=1 (about 3 minutes)")
def test_preemptions_and_a_dead_node_lose_nothing_and_change_no_token(oracle):
    run = run_scenario(SPEC)
    assert run["failed"] == {}
    assert run["token_ids"] == oracle
    # every token reached the client exactly once, in order (the stream never went back)
    assert run["streamed_token_ids"] == {rid: seqs[0] for rid, seqs in oracle.items()}
    decisions = run["decisions"]
    reasons = " | ".join(d["reason"] for d in decisions)
    assert "i1 preempted" in reasons and "i3 arrived" in reasons, reasons
    # NOTE: whether requests were still on i1's replica at its move, and on the killed host, is
    # timing (two busy cores); tests/spot/live/test_live_router.py moves KV and recovers for sure.
    assert len({d["config"] for d in decisions}) >= 2  # the configuration changed
