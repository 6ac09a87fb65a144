"""Server-sent events, client disconnects, and turning cumulative outputs into deltas."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse

from ember.engine.async_engine import RequestStream
from ember.engine.outputs import CompletionOutput, RequestOutput
from ember.server.errors import APIError, as_api_error, error_body

logger = logging.getLogger(__name__)

T = TypeVar("T")

DONE = "data: [DONE]\n\n"


def sse(payload: str) -> str:
    return f"data: {payload}\n\n"


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response that notices a client leaving while nothing is being
    sent (a queued request, a slow prefill) and then calls ``on_close`` at once.

    NOTE: Starlette only watches for ``http.disconnect`` on ASGI specs before 2.4; after, it
    relies on a failing ``send``, which a request that is still waiting never attempts."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str], *, on_close: Callable[[], None]) -> None:
        super().__init__(_with_error_event(content), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:
                        pass  # the client went away mid-write
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            self.on_close()


async def _with_error_event(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """Once the 200 has been sent, an error can only be reported in the stream: as an
    event carrying the OpenAI error body, then [DONE]."""
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as exc:
        error = as_api_error(exc)
        if error is None:
            logger.exception("streaming response failed")
            error = APIError(500, f"internal server error: {exc!r}")
        yield sse(json.dumps(error_body(error.status, error.message, param=error.param, code=error.code)))
        yield DONE


async def wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> tuple[bool, T | None]:
    """Run ``work`` until it finishes or the client disconnects (then it is cancelled, which
    aborts its engine requests). Returns (finished, result)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, watcher):
            if not pending.done():
                pending.cancel()
    if not task.done() or task.cancelled():
        await asyncio.gather(task, return_exceptions=True)
        return False, None
    return True, task.result()


async def final_output(stream: RequestStream, on_output: Callable[[RequestOutput], Any]) -> RequestOutput:
    output = None
    try:
        async for output in stream:
            on_output(output)
    finally:
        stream.abort()
    assert output is not None and output.finished
    return output


async def merge(streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Outputs of several streams as (stream index, output), in arrival order."""
    if len(streams) == 1:
        async for output in streams[0]:
            yield 0, output
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: RequestStream) -> None:
        try:
            async for output in stream:
                queue.put_nowait((index, output))
            queue.put_nowait((index, None))
        except Exception as exc:
            queue.put_nowait((index, exc))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        num_open = len(streams)
        while num_open:
            index, item = await queue.get()
            if item is None:
                num_open -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        for stream in streams:
            stream.abort()


@dataclass
class Delta:
    text: str
    logprobs: list | None  # TokenLogprobs of the new tokens
    num_new_tokens: int
    finish_reason: str | None
    stop_reason: int | str | None


class ChoiceCursor:
    """How much of one sequence has been sent.

    NOTE: while unfinished, the last ``len(longest stop string) - 1`` characters are held
    back: they may be the start of a stop string, which the engine cuts from the text once it
    completes, and text already sent cannot be taken back."""

    def __init__(self, stop: list[str]) -> None:
        self.holdback = max((len(s) for s in stop), default=1) - 1
        self.num_chars = 0
        self.num_tokens = 0
        self.finished = False

    def advance(self, completion: CompletionOutput) -> Delta | None:
        """The delta since the last call, or None if there is nothing new to send."""
        if self.finished:
            return None
        text = completion.text
        finished = completion.finish_reason is not None
        end = len(text) if finished else max(self.num_chars, len(text) - self.holdback)
        delta_text = text[self.num_chars : end]
        self.num_chars = max(self.num_chars, end)
        new_logprobs = None
        if completion.logprobs is not None:
            new_logprobs = completion.logprobs[self.num_tokens :]
        num_new = len(completion.token_ids) - self.num_tokens
        self.num_tokens = len(completion.token_ids)
        self.finished = finished
        if not delta_text and not num_new and not finished:
            return None
        return Delta(delta_text, new_logprobs, num_new, completion.finish_reason, completion.stop_reason)
