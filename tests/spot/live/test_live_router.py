"""The router on Ray, deterministically: requests move with their KV from one replica to
another mid-generation, then that replica's instance dies and they resume from checkpoints;
every output equals one uninterrupted engine's."""

from live_util import run_isolated
from router_scenario import PROMPTS, params

from ember.engine.llm import LLM


def test_moves_with_kv_and_recovery_from_checkpoints_change_no_token():
    result = run_isolated("router_scenario.py")
    with LLM(model="ember-tiny", latency_model="analytic") as llm:
        want = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, [params(i) for i in range(len(PROMPTS))])]
    assert result["tokens"] == want
    assert result["moved"] == len(PROMPTS) and result["kv_bytes"] > 0  # every request, with its KV
    assert all(n < 160 for n in result["at_move"].values())  # moved mid-generation
    assert result["recovered"] == len(PROMPTS) and result["replicas"] == ["r0"]
