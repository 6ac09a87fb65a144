"""Real `ember serve` processes on 127.0.0.1 (port 0, read back from the log), stopped by pid."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from server_util import MODEL_NAME, start_server  # noqa: E402


@pytest.fixture(scope="session")
def server(debug_llama, tmp_path_factory):
    """The shared server: debug-llama (max_model_len 512), a 64 KiB body limit."""
    process = start_server(
        tmp_path_factory,
        "server",
        debug_llama,
        "--served-model-name",
        MODEL_NAME,
        "--max-request-body-bytes",
        "65536",
    )
    yield process
    process.kill()


@pytest.fixture(scope="session")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def async_client(server):
    """Per test: its connection pool belongs to the event loop of one asyncio.run."""
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
