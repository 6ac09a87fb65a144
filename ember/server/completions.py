"""POST /v1/completions: text or token-id prompts, one set of ``n`` choices per prompt."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import Request, Response

from ember.server.errors import APIError
from ember.server.protocol import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    PromptTokensDetails,
    UsageInfo,
)
from ember.server.serving import Admitted, Prompt, ServingContext, empty_prompt_error, request_id
from ember.server.streaming import (
    DONE,
    ChoiceCursor,
    EventStreamResponse,
    final_output,
    merge,
    sse,
    unless_disconnected,
)


def _prompts(ctx: ServingContext, request: CompletionRequest) -> list[Prompt]:
    raw = request.prompt
    if isinstance(raw, str) or (raw and isinstance(raw[0], int)):
        raw = [raw]
    if not raw:
        raise empty_prompt_error("prompt")
    prompts = []
    for item in raw:
        if isinstance(item, str):
            prompts.append(Prompt(item, ctx.encode(item)))
        else:
            prompts.append(Prompt(None, ctx.check_token_ids(list(item), "prompt")))
        if not prompts[-1].token_ids:
            raise empty_prompt_error("prompt")
    return prompts


def _echo_text(ctx: ServingContext, prompt: Prompt) -> str:
    if prompt.text is not None:
        return prompt.text
    return ctx.require_tokenizer("echo").decode(prompt.token_ids, skip_special_tokens=False)


def _usage(admitted: list[Admitted], num_completion_tokens: int, num_cached: int) -> UsageInfo:
    num_prompt = sum(len(a.prompt.token_ids) for a in admitted)
    return UsageInfo(
        prompt_tokens=num_prompt,
        completion_tokens=num_completion_tokens,
        total_tokens=num_prompt + num_completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=num_cached),
    )


async def create_completion(ctx: ServingContext, request: CompletionRequest, raw: Request) -> Response:
    model = ctx.check_model(request.model)
    if request.suffix:
        raise APIError(400, "suffix is not supported", param="suffix")
    if request.echo and request.logprobs is not None:
        raise APIError(400, "echo together with logprobs is not supported", param="echo")
    prompts = _prompts(ctx, request)
    params = [
        ctx.sampling_params(
            request,
            num_prompt_tokens=len(p.token_ids),
            max_tokens=request.max_tokens,
            logprobs=request.logprobs,
            prompt_param="prompt",
        )
        for p in prompts
    ]
    admitted = await ctx.admit(prompts, params)
    response_id = request_id("cmpl")
    if request.stream:
        return EventStreamResponse(
            _stream(ctx, request, model, response_id, admitted),
            on_close=lambda: [a.close() for a in admitted],
        )

    async def collect():
        return await asyncio.gather(*(final_output(a.stream, a.observe) for a in admitted))

    try:
        finished, outputs = await unless_disconnected(raw, collect())
    finally:
        for a in admitted:
            a.close()
    if not finished:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it
    choices = []
    num_tokens = 0
    for i, (a, output) in enumerate(zip(admitted, outputs)):
        prefix = _echo_text(ctx, a.prompt) if request.echo else ""
        for completion in output.outputs:
            num_tokens += len(completion.token_ids)
            logprobs = None
            if completion.logprobs is not None:
                logprobs = ctx.token_strings.completion_logprobs(completion.logprobs, 0)
            choices.append(
                CompletionChoice(
                    index=i * request.n + completion.index,
                    text=prefix + completion.text,
                    logprobs=logprobs,
                    finish_reason=completion.finish_reason,
                    stop_reason=completion.stop_reason,
                )
            )
    cached = sum(o.num_cached_tokens for o in outputs)
    body = CompletionResponse(id=response_id, model=model, choices=choices, usage=_usage(admitted, num_tokens, cached))
    return Response(body.model_dump_json(), media_type="application/json")


async def _stream(
    ctx: ServingContext, request: CompletionRequest, model: str, response_id: str, admitted: list[Admitted]
) -> AsyncIterator[str]:
    created = int(time.time())
    cursors = {(i, j): ChoiceCursor(a.params.stop) for i, a in enumerate(admitted) for j in range(request.n)}
    include_usage = bool(request.stream_options and request.stream_options.include_usage)
    num_cached = {}
    if request.echo:
        for i, a in enumerate(admitted):
            text = _echo_text(ctx, a.prompt)
            for j in range(request.n):
                yield sse(_chunk(response_id, created, model, i * request.n + j, text, None, None, None))
    async for i, output in merge([a.stream for a in admitted]):
        admitted[i].observe(output)
        num_cached[i] = output.num_cached_tokens
        for completion in output.outputs:
            cursor = cursors[(i, completion.index)]
            offset = cursor.num_chars
            delta = cursor.advance(completion)
            if delta is None:
                continue
            logprobs = None
            if delta.logprobs is not None:
                logprobs = ctx.token_strings.completion_logprobs(delta.logprobs, offset)
            index = i * request.n + completion.index
            yield sse(
                _chunk(
                    response_id,
                    created,
                    model,
                    index,
                    delta.text,
                    logprobs,
                    delta.finish_reason,
                    delta.stop_reason,
                )
            )
    if include_usage:
        num_tokens = sum(c.num_tokens for c in cursors.values())
        usage = _usage(admitted, num_tokens, sum(num_cached.values()))
        yield sse(
            CompletionResponse(id=response_id, created=created, model=model, choices=[], usage=usage).model_dump_json()
        )
    yield DONE


def _chunk(response_id, created, model, index, text, logprobs, finish_reason, stop_reason) -> str:
    choice = CompletionChoice(
        index=index, text=text, logprobs=logprobs, finish_reason=finish_reason, stop_reason=stop_reason
    )
    return CompletionResponse(id=response_id, created=created, model=model, choices=[choice]).model_dump_json()
