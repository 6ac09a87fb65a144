"""SIGTERM: in-flight requests drain (up to --shutdown-timeout), the rest are aborted with an
error event, and the process exits 0."""

import os
import signal
import threading
import time

import httpx
import pytest
from server_util import start_server


def read_stream(url: str, body: dict, result: dict, first_line: threading.Event) -> None:
    chunks = []
    try:
        with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    chunks.append(line)
                    first_line.set()
        result["complete"] = True
    except httpx.HTTPError as exc:  # cut off by the shutdown
        result["complete"] = False
        result["error"] = repr(exc)
    finally:
        first_line.set()
        result["chunks"] = chunks


def test_sigterm_drains_short_requests_aborts_long_ones_and_exits_0(debug_llama, tmp_path_factory):
    server = start_server(tmp_path_factory, "shutdown", debug_llama, "--shutdown-timeout", "1")
    try:
        short = {"prompt": "short", "max_tokens": 8, "ignore_eos": True}
        long = {"prompt": "long", "max_tokens": 480, "n": 16, "ignore_eos": True}
        results, threads = {}, []
        for name, body in (("long", long), ("short", short)):
            results[name], started = {}, threading.Event()
            thread = threading.Thread(target=read_stream, args=(server.url, body, results[name], started))
            thread.start()
            assert started.wait(30)
            threads.append(thread)
        sent = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)
        status = server.process.wait(timeout=30)
        exit_seconds = time.monotonic() - sent
        for thread in threads:
            thread.join(30)
    except BaseException:
        server.kill()
        raise
    assert status == 0, server.log()[-3000:]
    assert exit_seconds < 15
    assert results["short"]["complete"] and results["short"]["chunks"][-1] == "data: [DONE]"
    long_chunks = results["long"]["chunks"]
    finishes = [c for c in long_chunks if '"finish_reason":"length"' in c]
    assert len(finishes) < 16, "the long request was not cut off by the shutdown timeout"
    # NOTE: cut off cleanly: an OpenAI error event, then [DONE]; not a torn connection.
    assert results["long"]["complete"], results["long"]
    assert '"error"' in long_chunks[-2] and "shutting down" in long_chunks[-2] and long_chunks[-1] == "data: [DONE]"
    assert "Application shutdown complete" in server.log()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health", timeout=2)
