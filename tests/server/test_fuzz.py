"""Schemathesis fuzzes every operation of the served OpenAPI spec (valid and invalid bodies):
no response may be a 5xx, every error has the OpenAI body, and the cache stays intact."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from server_util import start_server, wait_idle

schemathesis = pytest.importorskip("schemathesis")


@pytest.fixture(scope="module")
def fuzz_server(debug_llama, tmp_path_factory):
    # NOTE: a 64-token context bounds the work any generated request can ask for.
    process = start_server(
        tmp_path_factory, "fuzz", debug_llama, "--max-model-len", "64", "--served-model-name", "debug-llama"
    )
    yield process
    process.kill()


EXAMPLES_PER_OPERATION_AND_MODE = 6  # x 8 operations x (valid, invalid) = ~100 requests


def test_no_request_makes_a_5xx(fuzz_server):
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/tokenize"}
    num_calls = 0
    for operation in operations:
        for mode in schemathesis.GenerationMode:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES_PER_OPERATION_AND_MODE,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def check(case):
                nonlocal num_calls
                num_calls += 1
                response = case.call(timeout=60)
                assert response.status_code < 500, (case.as_curl_command(), response.text)
                if response.status_code >= 400:
                    error = response.json()["error"]
                    assert set(error) == {"message", "type", "param", "code"}, response.text

            try:
                check()
            except Unsatisfiable:
                assert mode is schemathesis.GenerationMode.NEGATIVE  # nothing to break: no inputs
    assert num_calls >= 50


def test_server_is_intact_after_fuzzing(fuzz_server):
    import httpx

    with httpx.Client(base_url=fuzz_server.url, timeout=30) as http:
        assert http.get("/health").status_code == 200
        assert wait_idle(http)["idle"]
