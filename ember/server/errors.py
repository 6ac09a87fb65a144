"""Errors as OpenAI sends them: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from ember.engine.async_engine import EngineDeadError, EngineOverloadedError
from ember.errors import InvalidInputError

# status -> OpenAI's error "type"
_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
}


class APIError(Exception):
    """An error with its HTTP status; the app's handler turns it into the OpenAI body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(error: APIError) -> JSONResponse:
    body = error_body(error.status, error.message, param=error.param, code=error.code)
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def as_api_error(exc: BaseException) -> APIError | None:
    """The API error for an exception a request can raise; None for a server bug."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, InvalidInputError):
        return APIError(400, str(exc), param=exc.param)
    if isinstance(exc, EngineOverloadedError):
        return APIError(503, str(exc), code="queue_full", headers={"Retry-After": "1"})
    if isinstance(exc, EngineDeadError):
        return APIError(503, str(exc), code="engine_unavailable")
    return None


def context_length_error(max_model_len: int, num_prompt_tokens: int, max_tokens: int, param: str) -> APIError:
    return APIError(
        400,
        f"This model's maximum context length is {max_model_len} tokens. However, you requested "
        f"{num_prompt_tokens + max_tokens} tokens ({num_prompt_tokens} in the {param}, "
        f"{max_tokens} in the completion). Please reduce the length of the {param} or completion.",
        param=param,
        code="context_length_exceeded",
    )
