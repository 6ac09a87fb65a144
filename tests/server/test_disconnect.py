"""A client that leaves mid-request has its request aborted and its KV blocks freed at once."""

import time

import httpx
from server_util import MODEL_NAME, metric, wait_idle

LONG = {"model": MODEL_NAME, "max_tokens": 480, "temperature": 0.0, "ignore_eos": True}


def wait_for_no_requests(http, timeout=5.0) -> float:
    start = time.monotonic()
    while http.get("/debug/engine").json()["num_requests"]:
        assert time.monotonic() - start < timeout, "the dropped request is still in the engine"
        time.sleep(0.005)
    return time.monotonic() - start


def test_client_dropping_a_stream_frees_its_blocks(server, http):
    wait_idle(http)
    tokens_before = metric(http, "ember:generation_tokens_total")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with client.stream(
            "POST", "/v1/completions", json={**LONG, "prompt": "tell a story", "stream": True}
        ) as response:
            lines = response.iter_lines()
            received = [line for line, _ in zip(lines, range(6)) if line.startswith("data:")]
            stats = http.get("/debug/engine").json()
            assert stats["num_requests"] == 1 and stats["num_free_kv_blocks"] < stats["num_kv_blocks"]
    # leaving both blocks closed the connection
    wait_for_no_requests(http)
    report = wait_idle(http, timeout=1.0)
    assert report["idle"], report
    generated = metric(http, "ember:generation_tokens_total") - tokens_before
    assert len(received) >= 3 and generated < LONG["max_tokens"]


def test_client_timing_out_a_non_streaming_request_frees_its_blocks(server, http):
    wait_idle(http)
    tokens_before = metric(http, "ember:generation_tokens_total")
    body = {**LONG, "n": 8, "prompt": "a very long answer"}
    try:
        httpx.post(f"{server.url}/v1/completions", json=body, timeout=httpx.Timeout(30, read=0.3))
    except httpx.ReadTimeout:
        pass
    else:
        raise AssertionError("the request finished before the client gave up; make it longer")
    wait_for_no_requests(http)
    assert wait_idle(http, timeout=1.0)["idle"]
    assert metric(http, "ember:generation_tokens_total") - tokens_before < 8 * LONG["max_tokens"]
