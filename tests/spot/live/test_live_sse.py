"""`ember spot serve` end to end: clients stream completions over HTTP while an instance is
preempted; every token arrives exactly once (the streamed text is the uninterrupted run's
text)."""

from live_util import greedy_texts, run_isolated
from sse_scenario import PROMPTS

MAX_TOKENS = 600


def test_streams_survive_a_preemption_with_every_token_once():
    result = run_isolated("sse_scenario.py", str(MAX_TOKENS))
    assert [s["text"] for s in result["streams"]] == greedy_texts(PROMPTS, MAX_TOKENS)
    # the preemption was decided on while the streams ran (whether their requests were on the
    # stopped replica is timing; the router test moves requests for sure)
    assert any("preempted" in d for d in result["decisions"]), result["decisions"]
