"""Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer streams and hide disconnects):
response counting for /metrics, the API key, and the request-body limit."""

from __future__ import annotations

import hmac
import json

from ember.server.errors import error_body
from ember.server.metrics import ServerMetrics

# NOTE: open without a key, as in vLLM: probes, scrapers and the API's own description.
PUBLIC_PATHS = frozenset({"/health", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


async def send_error(send, status: int, message: str, *, code: str | None = None, headers=()) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class StatusCounter:
    """Counts responses by endpoint and status (unknown paths share one label, so a scan of
    random URLs cannot grow the metric without bound)."""

    def __init__(self, app, metrics: ServerMetrics, known_paths: set[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.known_paths = known_paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [None]

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            path = scope["path"] if scope["path"] in self.known_paths else "other"
            self.metrics.http_requests.labels(endpoint=path, status=str(status[0] or 499)).inc()


class APIKeyCheck:
    def __init__(self, app, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            message = "Incorrect API key provided." if given else "Missing API key: send 'Authorization: Bearer KEY'."
            return await send_error(
                send, 401, message, code="invalid_api_key", headers=[(b"www-authenticate", b"Bearer")]
            )
        return await self.app(scope, receive, send)


class BodyLimit:
    """Reads the whole body first (it is JSON of a bounded size), answering 413 as soon as it
    exceeds ``max_bytes``, whether or not the client declared a Content-Length."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await send_error(send, 400, "invalid Content-Length header")
            if int(declared) > self.max_bytes:
                return await self._too_large(send)
        buffered, size = [], 0
        while True:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._too_large(send)
            if not message.get("more_body", False):
                break

        async def replay():
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send) -> None:
        await send_error(send, 413, f"request body is larger than {self.max_bytes} bytes", code="request_too_large")
