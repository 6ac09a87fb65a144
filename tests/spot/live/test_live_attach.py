"""`ember spot serve --address`: a deployment attached to a Ray cluster it did not start learns
its fleet from Ray's nodes (``ember_instance_<id>`` resources), and a node that leaves without a
notice costs no token: the streams carry on, each token once."""

from live_util import greedy_texts, run_isolated
from sse_scenario import PROMPTS

MAX_TOKENS = 400


def test_attached_deployment_survives_a_node_leaving():
    result = run_isolated("attach_scenario.py", str(MAX_TOKENS))
    assert [s["text"] for s in result["streams"]] == greedy_texts(PROMPTS, MAX_TOKENS)
    assert all(n < MAX_TOKENS for n in result["at_loss"]), result["at_loss"]  # the loss came mid-stream
    decisions = " | ".join(result["decisions"])
    assert "a arrived" in decisions and "b arrived" in decisions, decisions  # the fleet came from Ray
    assert "b terminated without notice" in decisions, decisions
