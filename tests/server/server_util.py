"""Helpers for the server tests: starting `ember serve`, waiting for an idle engine, reading
/metrics, checking OpenAI error bodies."""

from __future__ import annotations

import time

from ember.server.launcher import ServerProcess

# NOTE: one intra-op thread: the test machine has 2 shared cores, and torch's thread pool
# spinning against the test process costs ~20x per step there.
SERVER_ENV = {"OMP_NUM_THREADS": "1"}
MODEL_NAME = "debug-llama"


def start_server(tmp_path_factory, name: str, model_path, *args: str) -> ServerProcess:
    """`ember serve` on 127.0.0.1, a free port, debug endpoints on; the caller stops it."""
    log = tmp_path_factory.mktemp(name) / "serve.log"
    server = ServerProcess(
        ["--model", str(model_path), "--no-access-log", "--enable-debug-endpoints", *args],
        log_path=log,
        env=SERVER_ENV,
        startup_timeout=120,
    )
    return server.start()


def wait_idle(http, timeout: float = 10.0, headers=None) -> dict:
    """Wait until the engine holds no request and every KV block is free; integrity checked."""
    deadline = time.monotonic() + timeout
    while True:
        report = http.post("/debug/check_integrity", headers=headers).json()
        assert report["ok"], report
        if report["idle"] or time.monotonic() > deadline:
            return report
        time.sleep(0.02)


def metric(http, name: str, headers=None) -> float:
    """The sum of a metric's samples (all label values) from /metrics."""
    total = 0.0
    for line in http.get("/metrics", headers=headers).text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def assert_openai_error(response, status: int, param: str | None = "any") -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    if param != "any":
        assert error["param"] == param, error
    return error
