"""--api-key, --served-model-name and the bounded waiting queue (--max-waiting-requests)."""

import httpx
import openai
import pytest
from server_util import assert_openai_error, start_server, wait_idle

KEY = "sk-ember-test"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def limited(debug_llama, tmp_path_factory):
    process = start_server(
        tmp_path_factory,
        "limited",
        debug_llama,
        "--api-key",
        KEY,
        "--served-model-name",
        "tiny",
        "--max-num-seqs",
        "1",
        "--max-waiting-requests",
        "1",
    )
    yield process
    process.kill()


@pytest.fixture(scope="module")
def http(limited):
    with httpx.Client(base_url=limited.url, timeout=60) as client:
        yield client


def test_api_key_is_required_on_the_api_only(limited, http):
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
    error = assert_openai_error(http.post("/v1/completions", json=body), 401)
    assert error["code"] == "invalid_api_key"
    assert_openai_error(http.post("/v1/completions", json=body, headers={"Authorization": "Bearer nope"}), 401)
    assert_openai_error(http.get("/v1/models"), 401)
    assert_openai_error(http.post("/tokenize", json={"prompt": "x"}), 401)
    assert http.post("/v1/completions", json=body, headers=AUTH).status_code == 200
    assert http.get("/health").status_code == 200 and http.get("/metrics").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{limited.url}/v1", api_key="wrong", max_retries=0).models.list()
    good = openai.OpenAI(base_url=f"{limited.url}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in good.models.list().data] == ["tiny"]
    with pytest.raises(openai.NotFoundError):
        good.completions.create(model="debug-llama", prompt="x", max_tokens=1)


def test_full_waiting_queue_is_503_and_the_server_recovers(limited, http):
    long = {"model": "tiny", "max_tokens": 480, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=limited.url, headers=AUTH, timeout=30) as client:
        with client.stream("POST", "/v1/completions", json={**long, "prompt": "first"}) as running:
            lines = running.iter_lines()  # NOTE: kept: a dropped iterator closes the connection
            next(lines)  # it runs, holding the only slot (max_num_seqs=1)
            with client.stream("POST", "/v1/completions", json={**long, "prompt": "second"}) as waiting:
                assert waiting.status_code == 200  # admitted to the waiting queue (1 place)
                rejected = http.post("/v1/completions", json={**long, "prompt": "third"}, headers=AUTH)
                error = assert_openai_error(rejected, 503)
                assert error["code"] == "queue_full" and rejected.headers["retry-after"]
    assert wait_idle(http, headers=AUTH)["idle"]
    after = http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2}, headers=AUTH)
    assert after.status_code == 200
