"""The router on Ray, deterministically: requests move with their KV from one replica to
another mid-generation, then that replica's instance dies and they resume from checkpoints;
every output equals one uninterrupted engine's."""

import json
import subprocess
import sys
from pathlib import Path

from router_scenario import PROMPTS, params

from ember.engine.llm import LLM

HERE = Path(__file__).parent


def test_moves_with_kv_and_recovery_from_checkpoints_change_no_token():
    command = f"ip link set lo up; exec {sys.executable} {HERE / 'router_scenario.py'}"
    done = subprocess.run(["unshare", "-n", "sh", "-c", command], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    with LLM(model="ember-tiny", latency_model="analytic") as llm:
        want = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, [params(i) for i in range(len(PROMPTS))])]
    assert result["tokens"] == want
    assert result["moved"] == len(PROMPTS) and result["kv_bytes"] > 0  # every request, with its KV
    assert all(n < 160 for n in result["at_move"].values())  # moved mid-generation
    assert result["recovered"] == len(PROMPTS) and result["replicas"] == ["r0"]
