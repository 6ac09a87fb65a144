"""The FastAPI app: OpenAI's endpoints, vLLM's extras (/tokenize, /detokenize, /metrics) and
OpenAI-shaped errors for everything a client can get wrong (never FastAPI's 422 or a 500)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ember.engine.async_engine import AsyncLLMEngine
from ember.errors import EmberError
from ember.server.chat import create_chat_completion
from ember.server.completions import create_completion
from ember.server.config import ServerConfig
from ember.server.errors import APIError, as_api_error, error_body, error_response
from ember.server.metrics import ServerMetrics
from ember.server.middleware import APIKeyCheck, BodyLimit, StatusCounter
from ember.server.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeResponse,
)
from ember.server.serving import ServingContext

logger = logging.getLogger(__name__)

_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 503)}
_STREAM = {"text/event-stream": {"schema": {"type": "string"}}}


def build_app(engine: AsyncLLMEngine, config: ServerConfig, *, model: str) -> FastAPI:
    """The app serving ``engine``; starting the app starts the engine thread and stopping it
    (after uvicorn drained the connections) aborts what is left and stops the thread."""
    name = config.served_model_names[0] if config.served_model_names else model
    ctx = ServingContext(engine, config, ServerMetrics(name), model)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        await asyncio.to_thread(engine.shutdown)

    app = FastAPI(title="Ember OpenAI-compatible API", version="0.1.0", lifespan=lifespan, responses=_ERRORS)
    app.state.ctx = ctx

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if not _is_schema_tag(p)]
        message = first.get("msg", "invalid request")
        if not loc and first.get("type") in ("model_attributes_type", "dict_type", "json_invalid"):
            message = f"the request body must be a JSON object (Content-Type: application/json): {message}"
        if loc:
            message = f"{'.'.join(loc)}: {message}"
        return JSONResponse(error_body(400, message, param=loc[0] if loc else None), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(exc.status_code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def any_error(request: Request, exc: Exception) -> JSONResponse:
        error = as_api_error(exc)
        if error is not None:
            return error_response(error)
        logger.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body(500, f"internal server error: {exc!r}"), status_code=500)

    # NOTE: raised on purpose for the client's mistakes (and overload); the handler for
    # Exception is reserved for bugs, which Starlette also logs and re-raises.
    @app.exception_handler(APIError)
    @app.exception_handler(EmberError)
    async def client_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(as_api_error(exc) or APIError(400, str(exc)))

    @app.post("/v1/completions", response_model=CompletionResponse, responses={200: {"content": _STREAM}})
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await create_completion(ctx, body, request)

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses={200: {"content": _STREAM}})
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await create_chat_completion(ctx, body, request)

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        return ModelList(
            data=[ModelCard(id=name, root=ctx.model_path, max_model_len=ctx.max_model_len) for name in ctx.model_names]
        )

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard)
    async def model_card(model_id: str) -> ModelCard:
        return ModelCard(id=ctx.check_model(model_id), root=ctx.model_path, max_model_len=ctx.max_model_len)

    @app.get("/health", response_class=Response, responses={200: {"description": "the engine is running"}})
    async def health() -> Response:
        """200 while the engine runs; 503 once it failed or stopped."""
        if not engine.is_running:
            return JSONResponse(
                error_body(503, "the engine is not running", code="engine_unavailable"), status_code=503
            )
        return Response(status_code=200)

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(ctx.metrics.render(engine.stats), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/tokenize", response_model=TokenizeResponse)
    async def tokenize(body: TokenizeCompletionRequest | TokenizeChatRequest) -> TokenizeResponse:
        ctx.check_model(body.model)
        if isinstance(body, TokenizeChatRequest):
            text = ctx.render_chat(body.messages, add_generation_prompt=body.add_generation_prompt)
        else:
            text = body.prompt
        tokens = ctx.encode(text, add_special_tokens=body.add_special_tokens)
        return TokenizeResponse(count=len(tokens), max_model_len=ctx.max_model_len, tokens=tokens)

    @app.post("/detokenize", response_model=DetokenizeResponse)
    async def detokenize(body: DetokenizeRequest) -> DetokenizeResponse:
        ctx.check_model(body.model)
        tokens = ctx.check_token_ids(body.tokens, "tokens")
        return DetokenizeResponse(prompt=ctx.require_tokenizer("tokens").decode(tokens))

    if config.enable_debug_endpoints:
        _add_debug_routes(app, engine)

    known = {route.path for route in app.routes}
    if config.api_key is not None:
        app.add_middleware(APIKeyCheck, api_key=config.api_key)
    app.add_middleware(BodyLimit, max_bytes=config.max_request_body_bytes)
    app.add_middleware(StatusCounter, metrics=ctx.metrics, known_paths=known)  # outermost: counts 401/413 too
    return app


def _is_schema_tag(part) -> bool:
    """Parts of a pydantic error location that name a schema, not a field: "body", union
    members ("str", "list[int]", "function-after[...]"), model classes."""
    return isinstance(part, str) and (
        part in ("body", "query", "path", "str", "int", "float", "bool") or "[" in part or part[:1].isupper()
    )


def _add_debug_routes(app: FastAPI, engine: AsyncLLMEngine) -> None:
    @app.get("/debug/engine", include_in_schema=False)
    async def engine_stats() -> dict:
        """The engine thread's latest snapshot (running, waiting, free KV blocks, steps)."""
        return vars(engine.stats)

    @app.post("/debug/check_integrity", include_in_schema=False)
    async def check_integrity() -> dict:
        """Run the engine's invariant checks between two steps; with ``idle``, whether every
        KV block is free and no request is left."""

        def check(llm) -> dict:
            llm.check_integrity()
            kv = llm.kv_cache
            return {
                "ok": True,
                "num_requests": llm.num_unfinished_requests,
                "num_kv_blocks": kv.num_blocks,
                "num_free_kv_blocks": kv.num_free_blocks,
                "idle": not llm.has_unfinished_requests() and kv.num_free_blocks == kv.num_blocks,
            }

        try:
            return await engine.call(check)
        except AssertionError as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, status_code=500)
