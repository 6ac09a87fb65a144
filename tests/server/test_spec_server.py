"""`ember serve --speculative-models ...`: the same completions, and speculation metrics."""

import httpx
import pytest
from server_util import metric, start_server, wait_idle

PROMPT = '"""Utilities for parsing."""\n\nimport re\n'  # its greedy continuation repeats


@pytest.fixture(scope="module")
def spec_http(tmp_path_factory):
    from ember.zoo import resolve_model

    process = start_server(
        tmp_path_factory,
        "spec-server",
        resolve_model("ember-tiny"),
        "--served-model-name",
        "tiny",
        "--speculative-models",
        "ngram,ember-draft-b",
        "--speculative-expansion",
        "2,1",
    )
    with httpx.Client(base_url=process.url, timeout=120) as client:
        yield client
    process.kill()


def test_speculative_server_serves_greedy_output_and_reports_acceptance(spec_http):
    from ember.core.sampling_params import SamplingParams
    from ember.engine.llm import LLM

    want = LLM(model="ember-tiny").generate(PROMPT, SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 32, "temperature": 0, "ignore_eos": True}
    response = spec_http.post("/v1/completions", json=body)
    assert response.status_code == 200
    assert response.json()["choices"][0]["text"] == want[0].outputs[0].text
    wait_idle(spec_http)
    drafts = metric(spec_http, "ember:spec_decode_num_drafts")
    accepted = metric(spec_http, "ember:spec_decode_num_accepted_tokens")
    assert drafts > 0 and accepted > 0
    assert accepted <= metric(spec_http, "ember:spec_decode_num_draft_tokens")
    assert 0 < metric(spec_http, 'ember:spec_decode_acceptance_by_depth{depth="1"}') <= 1
