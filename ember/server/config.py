"""Server options (the engine's are ``ember.config.EngineConfig``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ember.errors import InvalidInputError


def _require(condition: bool, name: str, value, rule: str) -> None:
    if not condition:
        raise InvalidInputError(f"{name}={value!r}: {rule}", param=name)


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind"})
    port: int = field(default=8000, metadata={"help": "port to bind; 0 picks a free one (logged)"})
    api_key: str | None = field(default=None, metadata={"help": "require 'Authorization: Bearer KEY' on the API"})
    served_model_names: tuple[str, ...] = field(
        default=(), metadata={"help": "names clients use for the model (default: --model)"}
    )
    max_waiting_requests: int | None = field(
        default=1024, metadata={"help": "queued requests beyond which new ones get 503"}
    )
    max_request_body_bytes: int = field(default=16 * 2**20, metadata={"help": "larger request bodies get 413"})
    shutdown_timeout: float = field(
        default=10.0, metadata={"help": "seconds SIGTERM waits for in-flight requests before aborting them"}
    )
    enable_debug_endpoints: bool = field(
        default=False, metadata={"help": "serve /debug/engine and /debug/check_integrity (tests)"}
    )
    log_level: str = field(default="info", metadata={"help": "uvicorn log level"})
    access_log: bool = field(default=True, metadata={"help": "log every HTTP request"})

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, "port", self.port, "must be in [0, 65535]")
        _require(
            self.max_waiting_requests is None or self.max_waiting_requests >= 1,
            "max_waiting_requests",
            self.max_waiting_requests,
            "must be >= 1",
        )
        _require(
            self.max_request_body_bytes >= 1024,
            "max_request_body_bytes",
            self.max_request_body_bytes,
            "must be >= 1024",
        )
        _require(self.shutdown_timeout >= 0, "shutdown_timeout", self.shutdown_timeout, "must be >= 0")
        _require(self.api_key != "", "api_key", self.api_key, "must not be empty")
        _require(
            self.log_level in ("critical", "error", "warning", "info", "debug", "trace"),
            "log_level",
            self.log_level,
            "must be a uvicorn log level",
        )
