"""`ember serve`: the OpenAI-compatible server (uvicorn) in front of an engine thread."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import socket
import sys

from ember.cli_args import add_engine_args, engine_kwargs
from ember.errors import InvalidInputError
from ember.server.config import ServerConfig

_NOT_ENGINE_FLAGS = ("model",)


def register(subparsers) -> None:
    serve = subparsers.add_parser("serve", help="serve a model over the OpenAI API (FastAPI + uvicorn)")
    serve.add_argument("model_tag", nargs="?", help="the model, as a positional (same as --model)")
    serve.add_argument("--model", help="HF checkpoint directory, hub id, or built-in name (e.g. debug-llama)")
    add_server_args(serve)
    add_engine_args(serve, skip=_NOT_ENGINE_FLAGS)
    serve.set_defaults(func=run_serve)


def add_server_args(serve: argparse.ArgumentParser) -> None:
    """The ``ServerConfig`` flags (also ``ember spot serve``'s)."""
    group = serve.add_argument_group("server options")
    for f in dataclasses.fields(ServerConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if f.name == "served_model_names":
            group.add_argument("--served-model-name", dest=f.name, nargs="+", default=None, help=help_text)
        elif f.type in ("bool", bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            kind = {"int": int, "int | None": int, "float": float}.get(str(f.type), str)
            group.add_argument(flag, type=kind, default=f.default, help=f"{help_text} (default: {f.default})")


def server_config(args: argparse.Namespace) -> ServerConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServerConfig)}
    values["served_model_names"] = tuple(values["served_model_names"] or ())
    return ServerConfig(**values)


def bind(host: str, port: int) -> socket.socket:
    """Bind before loading the model, so a taken port fails in a second, not after a load."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise InvalidInputError(f"cannot bind {host}:{port}: {exc.strerror or exc}", param="port") from None
    sock.set_inheritable(True)
    return sock


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(0)


def run_serve(args: argparse.Namespace) -> int:
    from ember.zoo import default_model

    model = args.model or args.model_tag or default_model()
    if not model:
        raise InvalidInputError(
            "--model is required: an HF checkpoint directory, a hub id, or a built-in name "
            "from `ember models` (e.g. --model debug-llama)"
        )
    config = server_config(args)
    # NOTE: SIGTERM during the model load exits at once.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sock = bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"

    try:
        import uvicorn  # noqa: F401
    except ImportError:
        raise InvalidInputError("`ember serve` needs the server extra: pip install 'ember[server]'") from None

    from ember.config import EngineConfig
    from ember.engine.async_engine import AsyncLLMEngine
    from ember.engine.llm_engine import LLMEngine

    llm = LLMEngine(EngineConfig.from_kwargs(model, **engine_kwargs(args, skip=_NOT_ENGINE_FLAGS)))
    engine = AsyncLLMEngine(llm, max_waiting_requests=config.max_waiting_requests)
    return serve_engine(engine, config, sock, model=model, url=url, command="ember serve")


def serve_engine(engine, config: ServerConfig, sock: socket.socket, *, model: str, url: str, command: str) -> int:
    """Serve ``engine`` (``AsyncLLMEngine``, or anything with its interface) on ``sock`` until
    SIGTERM/SIGINT; drains in-flight requests for ``shutdown_timeout`` first."""
    import uvicorn

    from ember.server.openai_api import build_app

    app = build_app(engine, config, model=model)

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                print(f"{command}: listening on {url}", flush=True)

        async def shutdown(self, sockets=None) -> None:
            # NOTE: in-flight requests get shutdown_timeout to finish; then the engine ends the
            # rest (streams close with an error event, others get 503), so every response
            # completes and uvicorn never has to cancel a task (its grace is a backstop).
            loop = asyncio.get_running_loop()
            loop.call_later(
                config.shutdown_timeout,
                lambda: engine.abort_all("the server is shutting down", stop_admitting=True),
            )
            await super().shutdown(sockets=sockets)

    server = Server(
        uvicorn.Config(
            app,
            log_level=config.log_level,
            access_log=config.access_log,
            timeout_graceful_shutdown=config.shutdown_timeout + 5.0,
            timeout_keep_alive=5,
        )
    )
    # NOTE: while serving, uvicorn's own handler takes SIGTERM (drain for shutdown_timeout,
    # then cancel what is left) and re-raises it once it has shut down; this one then lands as
    # a no-op, so the process exits 0. Before uvicorn installs its handler it stops startup.
    signal.signal(signal.SIGTERM, lambda signum, frame: setattr(server, "should_exit", True))
    try:
        server.run(sockets=[sock])
    finally:
        engine.shutdown()
        sock.close()
    return 0


if __name__ == "__main__":
    from ember.cli import main

    sys.exit(main(["serve", *sys.argv[1:]]))
