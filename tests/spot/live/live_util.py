"""What the live tests share: a scenario script run in a loopback-only network namespace (and
nothing of Ray's left behind), and the uninterrupted engine's greedy text."""

import json
import subprocess
import sys
from pathlib import Path

from ember.core.sampling_params import SamplingParams
from ember.engine.llm import LLM

HERE = Path(__file__).parent


def ray_processes() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "raylet|gcs_server"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def run_isolated(script: str, *args: str, timeout: float = 600) -> dict:
    """Run ``script ARGS`` under ``unshare -n`` with loopback up; returns the JSON of its last
    line that starts with "{". Fails if it fails or leaves Ray processes behind."""
    before = ray_processes()
    quoted = " ".join(f"'{a}'" for a in args)
    command = f"ip link set lo up; exec {sys.executable} {HERE / script} {quoted}"
    done = subprocess.run(["unshare", "-n", "sh", "-c", command], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert ray_processes() <= before, "Ray processes left behind"
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def greedy_texts(prompts: list[str], max_tokens: int) -> list[str]:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    with LLM(model="ember-tiny", latency_model="analytic") as llm:
        return [o.outputs[0].text for o in llm.generate(prompts, params)]
