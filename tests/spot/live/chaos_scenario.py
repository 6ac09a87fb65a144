"""The chaos scenario of tests/spot/live/test_live_chaos.py, run in a loopback-only network
namespace: prints the LiveRun as JSON on the last line of stdout."""

import asyncio
import json
import sys
from pathlib import Path

from ember.core.sampling_params import SamplingParams
from ember.spot.live.deployment import LiveDeploymentConfig
from ember.spot.live.driver import LiveRequest, run_live
from ember.spot.notices import TraceReplayConfig
from ember.spot.traces import load_trace, scale_trace

DATA = Path(__file__).resolve().parents[1] / "data"
PROMPTS = ["def fibonacci(n):", "import os\nimport sys\n", "class Stack:\n", "for i in range(10):", "# utils\n"]


def workload(num_requests: int, max_tokens: int, gap_s: float) -> list[LiveRequest]:
    """Greedy and seeded sampled requests, arriving over the run."""
    out = []
    for i in range(num_requests):
        if i % 2 == 0:
            params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        else:
            params = SamplingParams(temperature=0.9, top_p=0.95, seed=1000 + i, max_tokens=max_tokens, ignore_eos=True)
        out.append(LiveRequest(f"q{i}", PROMPTS[i % len(PROMPTS)] + f"# {i}\n", params, at_s=gap_s * i))
    return out


def trace_of(spec: dict):
    return scale_trace(load_trace(DATA / spec["trace"]), spec["scale"])


def main(argv: list[str]) -> None:
    spec = json.loads(argv[1])
    run = asyncio.run(
        run_live(
            model="ember-tiny",
            engine_options={"latency_model": "analytic", "max_num_seqs": 32},
            deployment=LiveDeploymentConfig(policy=spec.get("policy", "spotserve"), **spec.get("deployment", {})),
            trace=trace_of(spec),
            replay=TraceReplayConfig(
                speedup=spec["speedup"], grace_period_s=spec["grace_s"], start_s=spec["start_s"], end_s=spec["end_s"]
            ),
            instance_ids=spec["instance_ids"],
            requests=workload(spec["num_requests"], spec["max_tokens"], spec["gap_s"]),
            kills=[tuple(k) for k in spec.get("kills", [])],
            timeout_s=spec.get("timeout_s", 900),
        )
    )
    print(run.to_json(), flush=True)


if __name__ == "__main__":
    main(sys.argv)
