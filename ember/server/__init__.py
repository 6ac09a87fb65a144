"""The OpenAI-compatible server (`ember serve`).

    cli.py          `ember serve`: flags, socket, uvicorn, SIGTERM
    openai_api.py   the FastAPI app: routes, error handlers, middleware order
    completions.py  /v1/completions          chat.py   /v1/chat/completions
    serving.py      what both share: model names, sampling params, admission to the engine
    streaming.py    server-sent events, disconnects, cumulative outputs -> deltas
    protocol.py     pydantic request/response schemas (the OpenAPI spec)
    errors.py       OpenAI error bodies           middleware.py  API key, body limit, counting
    metrics.py      Prometheus metrics            logprobs.py    logprobs in OpenAI's shapes
    launcher.py     `ember serve` as a child process (tests, `ember bench serve`)

The engine itself runs in a background thread: ``ember.engine.async_engine.AsyncLLMEngine``.
"""
