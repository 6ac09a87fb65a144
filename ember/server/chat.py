"""POST /v1/chat/completions: messages rendered with the model's chat template."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import Request, Response

from ember.server.errors import APIError
from ember.server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatStreamChoice,
    DeltaMessage,
    PromptTokensDetails,
    UsageInfo,
)
from ember.server.serving import Admitted, Prompt, ServingContext, empty_prompt_error, request_id
from ember.server.streaming import (
    DONE,
    ChoiceCursor,
    EventStreamResponse,
    final_output,
    sse,
    unless_disconnected,
)


def _check_supported(request: ChatCompletionRequest) -> None:
    if request.response_format is not None and request.response_format.type != "text":
        raise APIError(
            400, f"response_format {request.response_format.type!r} is not supported", param="response_format"
        )
    if request.tools and request.tool_choice != "none":
        raise APIError(400, "tool calling is not supported by this server", param="tools")
    if request.top_logprobs is not None and not request.logprobs:
        raise APIError(400, "top_logprobs needs logprobs set to true", param="top_logprobs")


def _usage(admitted: Admitted, num_completion_tokens: int, num_cached: int) -> UsageInfo:
    num_prompt = len(admitted.prompt.token_ids)
    return UsageInfo(
        prompt_tokens=num_prompt,
        completion_tokens=num_completion_tokens,
        total_tokens=num_prompt + num_completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=num_cached),
    )


async def create_chat_completion(ctx: ServingContext, request: ChatCompletionRequest, raw: Request) -> Response:
    model = ctx.check_model(request.model)
    _check_supported(request)
    text = ctx.render_chat(request.messages, add_generation_prompt=request.add_generation_prompt)
    # NOTE: the template already wrote any BOS; encoding must not add a second one.
    prompt = Prompt(text, ctx.encode(text, add_special_tokens=False))
    if not prompt.token_ids:
        raise empty_prompt_error("messages")
    max_tokens = request.max_completion_tokens or request.max_tokens
    logprobs = (request.top_logprobs or 0) if request.logprobs else None
    params = ctx.sampling_params(
        request,
        num_prompt_tokens=len(prompt.token_ids),
        max_tokens=max_tokens,
        logprobs=logprobs,
        prompt_param="messages",
    )
    (admitted,) = await ctx.admit([prompt], [params])
    response_id = request_id("chatcmpl")
    if request.stream:
        return EventStreamResponse(_stream(ctx, request, model, response_id, admitted), on_close=admitted.close)

    try:
        finished, output = await unless_disconnected(raw, final_output(admitted.stream, admitted.observe))
    finally:
        admitted.close()
    if not finished:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it
    choices = []
    for completion in output.outputs:
        logprobs_out = None
        if completion.logprobs is not None:
            logprobs_out = ctx.token_strings.chat_logprobs(completion.logprobs)
        choices.append(
            ChatChoice(
                index=completion.index,
                message=AssistantMessage(content=completion.text),
                logprobs=logprobs_out,
                finish_reason=completion.finish_reason,
                stop_reason=completion.stop_reason,
            )
        )
    num_tokens = sum(len(c.token_ids) for c in output.outputs)
    body = ChatCompletionResponse(
        id=response_id,
        model=model,
        choices=choices,
        usage=_usage(admitted, num_tokens, output.num_cached_tokens),
    )
    return Response(body.model_dump_json(), media_type="application/json")


async def _stream(
    ctx: ServingContext, request: ChatCompletionRequest, model: str, response_id: str, admitted: Admitted
) -> AsyncIterator[str]:
    created = int(time.time())
    include_usage = bool(request.stream_options and request.stream_options.include_usage)

    def chunk(choice: ChatStreamChoice) -> str:
        return sse(
            ChatCompletionChunk(id=response_id, created=created, model=model, choices=[choice]).model_dump_json()
        )

    cursors = [ChoiceCursor(admitted.params.stop) for _ in range(request.n)]
    for index in range(request.n):
        yield chunk(ChatStreamChoice(index=index, delta=DeltaMessage(role="assistant", content="")))
    num_cached = 0
    async for output in admitted.stream:
        admitted.observe(output)
        num_cached = output.num_cached_tokens
        for completion in output.outputs:
            delta = cursors[completion.index].advance(completion)
            if delta is None:
                continue
            logprobs = None
            if delta.logprobs is not None:
                logprobs = ctx.token_strings.chat_logprobs(delta.logprobs)
            yield chunk(
                ChatStreamChoice(
                    index=completion.index,
                    delta=DeltaMessage(content=delta.text) if delta.text else DeltaMessage(),
                    logprobs=logprobs,
                    finish_reason=delta.finish_reason,
                    stop_reason=delta.stop_reason,
                )
            )
    if include_usage:
        usage = _usage(admitted, sum(c.num_tokens for c in cursors), num_cached)
        body = ChatCompletionChunk(id=response_id, created=created, model=model, choices=[], usage=usage)
        yield sse(body.model_dump_json())
    yield DONE
