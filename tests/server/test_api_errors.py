"""Every client mistake gets its status and the OpenAI error body, and the server keeps serving."""

import pytest
from server_util import MODEL_NAME, assert_openai_error, wait_idle

CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
COMPLETION = {"model": MODEL_NAME, "prompt": "hi", "max_tokens": 2}


def still_serves(http):
    response = http.post("/v1/completions", json=COMPLETION)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/completions", {**COMPLETION, "max_tokens": "many"}, "max_tokens"),
        ("/v1/completions", {**COMPLETION, "temperature": -0.5}, "temperature"),
        ("/v1/completions", {**COMPLETION, "top_p": 0}, "top_p"),
        ("/v1/completions", {**COMPLETION, "n": 0}, "n"),
        ("/v1/completions", {**COMPLETION, "logprobs": 21}, "logprobs"),
        ("/v1/completions", {**COMPLETION, "min_tokens": 5}, "min_tokens"),  # > max_tokens
        ("/v1/completions", {**COMPLETION, "seed": 2**70}, "seed"),
        ("/v1/completions", {**COMPLETION, "stop": [""]}, "stop"),
        ("/v1/completions", {**COMPLETION, "stream_options": {"include_usage": True}}, "stream_options"),
        ("/v1/completions", {**COMPLETION, "prompt": []}, "prompt"),
        ("/v1/completions", {**COMPLETION, "prompt": [5, 10**6]}, "prompt"),
        ("/v1/completions", {**COMPLETION, "prompt": [1, -3]}, "prompt"),
        ("/v1/completions", {"model": MODEL_NAME}, "prompt"),
        ("/v1/chat/completions", {**CHAT, "messages": []}, "messages"),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, "messages"),
        ("/v1/chat/completions", {**CHAT, "top_logprobs": 2}, "top_logprobs"),
        ("/v1/chat/completions", {**CHAT, "response_format": {"type": "json_object"}}, "response_format"),
        (
            "/v1/chat/completions",
            {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages",
        ),
        ("/detokenize", {"tokens": [10**6]}, "tokens"),
        ("/tokenize", {"nothing": 1}, None),
    ],
)
def test_invalid_parameters_are_400_naming_the_param(http, path, body, param):
    error = assert_openai_error(http.post(path, json=body), 400)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error


def test_malformed_json_and_non_object_bodies_are_400(http):
    for content in (b"{not json", b"[1, 2]", b"", b"\xff\xfe"):
        response = http.post("/v1/completions", content=content, headers={"content-type": "application/json"})
        assert_openai_error(response, 400)
    still_serves(http)


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_prompt_plus_max_tokens_over_the_context_is_400_naming_both(http, endpoint):
    if endpoint == "completions":
        body = {**COMPLETION, "prompt": "hello " * 200, "max_tokens": 400}
    else:
        body = {
            **CHAT,
            "messages": [{"role": "user", "content": "hello " * 200}],
            "max_completion_tokens": 400,
        }
    error = assert_openai_error(http.post(f"/v1/{endpoint.replace('chat', 'chat/completions')}", json=body), 400)
    assert error["code"] == "context_length_exceeded"
    assert "512" in error["message"] and " 400 " in error["message"]
    too_long = {**COMPLETION, "prompt": "hello " * 600, "max_tokens": None}
    assert_openai_error(http.post("/v1/completions", json=too_long), 400, "prompt")
    still_serves(http)


def test_unknown_model_route_and_method(http):
    error = assert_openai_error(http.post("/v1/completions", json={**COMPLETION, "model": "gpt-9"}), 404, "model")
    assert error["code"] == "model_not_found"
    assert_openai_error(http.get("/v1/models/gpt-9"), 404)
    assert_openai_error(http.get("/v1/nothing-here"), 404)
    assert_openai_error(http.get("/v1/completions"), 405)
    still_serves(http)


def test_oversized_bodies_are_413(http):
    huge = {**COMPLETION, "prompt": "x" * 70_000}  # the server allows 64 KiB
    assert_openai_error(http.post("/v1/completions", json=huge), 413)

    def chunked():  # no Content-Length: the limit must hold on the bytes actually received
        for _ in range(40):
            yield b" " * 4096

    response = http.post("/v1/completions", content=chunked(), headers={"content-type": "application/json"})
    assert_openai_error(response, 413)
    still_serves(http)
    wait_idle(http)
