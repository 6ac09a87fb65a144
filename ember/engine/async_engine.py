"""The engine behind the server: one background thread steps an ``LLMEngine``; asyncio code
talks to it through a command queue and receives outputs on per-request asyncio queues.

    handler --add / abort / call--> SimpleQueue --> engine thread: apply commands, step()
    handler <----- RequestOutput ----- asyncio.Queue <-- loop.call_soon_threadsafe (once a step)

Only the engine thread touches the ``LLMEngine``, so the engine needs no lock. Commands are
applied between steps: an abort frees the request's KV blocks before the next step runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ember.core.sampling_params import SamplingParams
from ember.engine.llm_engine import LLMEngine, PromptType
from ember.engine.outputs import RequestOutput
from ember.errors import EmberError

logger = logging.getLogger(__name__)


class EngineOverloadedError(EmberError):
    """The bounded waiting queue is full; the client should retry later (HTTP 503)."""


class EngineDeadError(EmberError):
    """The engine has stopped (shutdown) or failed; no request can be served (HTTP 503)."""


@dataclass(frozen=True)
class EngineStats:
    """A snapshot taken by the engine thread after each loop iteration."""

    num_running: int = 0  # sequences in the running batch
    num_waiting: int = 0  # sequences queued for admission (preempted ones included)
    num_requests: int = 0  # unfinished requests (one per add_request, whatever its n)
    num_kv_blocks: int = 0
    num_free_kv_blocks: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_hit_rate: float = 0.0
    prefix_cache_queried_tokens: int = 0
    prefix_cache_hit_tokens: int = 0
    num_steps: int = 0
    num_preemptions: int = 0
    speculation: dict | None = None  # SpecStats.to_dict() when speculating
    spot: dict | None = None  # SpotServe live counters (ember.spot.live.frontend) behind `ember spot serve`


# Commands: plain values carrying ids; applying one twice is harmless.
@dataclass(frozen=True)
class _Add:
    request_id: str
    prompt: PromptType
    params: SamplingParams
    stream: RequestStream
    accepted: concurrent.futures.Future
    arrival_time: float | None


@dataclass(frozen=True)
class _Abort:
    request_id: str


@dataclass(frozen=True)
class _Call:
    fn: Callable[[LLMEngine], Any]
    result: concurrent.futures.Future


@dataclass(frozen=True)
class _AbortAll:
    reason: str
    stop_admitting: bool


@dataclass(frozen=True)
class _Stop:
    reason: str


class OutputStream:
    """Cumulative outputs of one request as an async iterator: a consumer that fell behind
    skips straight to the newest; the last has ``finished=True``; an error put in ends it."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.finished = False
        self._queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()

    def __aiter__(self) -> OutputStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        while not isinstance(item, BaseException) and not self._queue.empty():
            item = self._queue.get_nowait()
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        self.finished = item.finished
        return item


class RequestStream(OutputStream):
    """The outputs of one request of an ``AsyncLLMEngine``."""

    def __init__(self, request_id: str, engine: AsyncLLMEngine, loop: asyncio.AbstractEventLoop):
        super().__init__(request_id)
        self._engine = engine
        self._loop = loop

    def abort(self) -> None:
        """Stop the request and free its KV (before the engine's next step); idempotent."""
        if not self.finished:
            self.finished = True
            self._engine._submit(_Abort(self.request_id))


class AsyncLLMEngine:
    """An ``LLMEngine`` stepped by a background thread, driven from asyncio.

    >>> engine = AsyncLLMEngine(LLMEngine(config)); engine.start()
    >>> stream = await engine.add_request("r1", "Hello", SamplingParams(max_tokens=8))
    >>> async for output in stream: print(output.outputs[0].text)
    """

    def __init__(self, engine: LLMEngine, *, max_waiting_requests: int | None = None) -> None:
        self.engine = engine
        self.max_waiting_requests = max_waiting_requests
        self.stats = EngineStats()
        self.error: BaseException | None = None
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, RequestStream] = {}
        self._num_steps = 0
        self._closed_reason: str | None = None  # set once no request is admitted any more
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="ember-engine", daemon=True)

    # ------------------------------------------------------------ asyncio side
    def start(self) -> None:
        self._publish_stats()
        self._thread.start()

    @property
    def is_running(self) -> bool:
        """Started, not failed, and still admitting requests."""
        return self._thread.is_alive() and self.error is None and self._closed_reason is None

    @property
    def num_steps(self) -> int:
        """Engine steps run so far (live; ``stats`` lags it by up to one step)."""
        return self._num_steps

    async def add_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams,
        *,
        arrival_time: float | None = None,
    ) -> RequestStream:
        """Queue a request; returns its stream once the engine accepted it.

        Raises ``InvalidInputError`` (bad prompt), ``EngineOverloadedError`` (waiting queue
        full) or ``EngineDeadError``. Cancelling the caller aborts the request."""
        if not self.is_running:
            raise EngineDeadError(self._dead_message())
        stream = RequestStream(request_id, self, asyncio.get_running_loop())
        accepted: concurrent.futures.Future = concurrent.futures.Future()
        self._submit(_Add(request_id, prompt, params, stream, accepted, arrival_time))
        try:
            await asyncio.wrap_future(accepted)
        except asyncio.CancelledError:
            stream.abort()
            raise
        return stream

    async def generate(
        self, request_id: str, prompt: PromptType, params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        """``add_request`` and iterate; leaving the loop early aborts the request."""
        stream = await self.add_request(request_id, prompt, params)
        try:
            async for output in stream:
                yield output
        finally:
            stream.abort()

    async def call(self, fn: Callable[[LLMEngine], Any]) -> Any:
        """Run ``fn(engine)`` on the engine thread between two steps; returns its result."""
        if not self._thread.is_alive():
            raise EngineDeadError(self._dead_message())
        result: concurrent.futures.Future = concurrent.futures.Future()
        self._submit(_Call(fn, result))
        return await asyncio.wrap_future(result)

    def abort_all(self, reason: str, *, stop_admitting: bool = False) -> None:
        """End every in-flight request: its stream raises ``EngineDeadError(reason)``. With
        ``stop_admitting`` (a server shutting down), later requests get that error too."""
        self._submit(_AbortAll(reason, stop_admitting))

    def shutdown(self, timeout: float = 10.0) -> None:
        """Abort whatever is still in flight and stop the thread (idempotent)."""
        if self._thread.is_alive():
            self._submit(_Stop("the server is shutting down"))
            self._thread.join(timeout)

    def _submit(self, command) -> None:
        # NOTE: under the lock the engine thread takes to stop, so no command is queued after
        # the thread's last look at the queue: it is either applied or rejected here.
        with self._lock:
            if not self._stopped:
                self._commands.put(command)
                return
        _reject(command, EngineDeadError(self._dead_message()))

    def _dead_message(self) -> str:
        if self.error is not None:
            return f"the engine failed: {self.error!r}"
        return self._closed_reason or "the engine is not running"

    # ------------------------------------------------------------- engine side
    def _run(self) -> None:
        engine = self.engine
        while True:
            idle = not engine.has_unfinished_requests() or self.error is not None
            commands = [self._commands.get()] if idle else []
            while True:
                try:
                    commands.append(self._commands.get_nowait())
                except queue.Empty:
                    break
            for i, command in enumerate(commands):
                if isinstance(command, _Stop):
                    self._stop(command.reason, commands[i + 1 :])
                    return
                self._apply(command)
            if self.error is None and engine.has_unfinished_requests():
                try:
                    outputs = engine.step()
                except Exception as exc:  # an engine bug: every in-flight request is lost
                    logger.exception("engine step failed; failing all requests")
                    self.error = exc
                    self._fail_all(EngineDeadError(f"the engine failed: {exc!r}"))
                else:
                    self._num_steps += 1
                    self._dispatch(outputs)
            self._publish_stats()

    def _apply(self, command) -> None:
        if isinstance(command, _Add):
            if not command.accepted.set_running_or_notify_cancel():
                return  # the caller went away before the request was added
            try:
                self._admit(command)
            except Exception as exc:
                command.accepted.set_exception(exc)
            else:
                self._streams[command.request_id] = command.stream
                command.accepted.set_result(None)
        elif isinstance(command, _Abort):
            self.engine.abort_request(command.request_id)
            self._streams.pop(command.request_id, None)
        elif isinstance(command, _AbortAll):
            if command.stop_admitting:
                self._closed_reason = command.reason
            self._fail_all(EngineDeadError(command.reason))
        elif isinstance(command, _Call):
            if command.result.set_running_or_notify_cancel():
                try:
                    command.result.set_result(command.fn(self.engine))
                except Exception as exc:
                    command.result.set_exception(exc)

    def _admit(self, command: _Add) -> None:
        if self.error is not None or self._closed_reason is not None:
            raise EngineDeadError(self._dead_message())
        limit = self.max_waiting_requests
        if limit is not None and self.engine.scheduler.num_waiting >= limit:
            raise EngineOverloadedError(f"the server's waiting queue is full ({limit} requests); retry later")
        self.engine.add_request(command.request_id, command.prompt, command.params, arrival_time=command.arrival_time)

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestStream, Any]]] = {}
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue
            if output.finished:
                del self._streams[output.request_id]
            by_loop.setdefault(stream._loop, []).append((stream, output))
        for loop, items in by_loop.items():
            _deliver_soon(loop, items)

    def _fail_all(self, error: BaseException) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestStream, Any]]] = {}
        for request_id, stream in self._streams.items():
            self.engine.abort_request(request_id)
            by_loop.setdefault(stream._loop, []).append((stream, error))
        self._streams.clear()
        for loop, items in by_loop.items():
            _deliver_soon(loop, items)

    def _stop(self, reason: str, unapplied: list) -> None:
        self._closed_reason = self._closed_reason or reason
        with self._lock:
            self._stopped = True
        while True:
            try:
                unapplied.append(self._commands.get_nowait())
            except queue.Empty:
                break
        error = EngineDeadError(reason)
        for command in unapplied:
            _reject(command, error)
        self._fail_all(error)
        self._publish_stats()

    def _publish_stats(self) -> None:
        engine = self.engine
        kv = engine.kv_cache
        # NOTE: one attribute assignment, so readers on other threads see a whole snapshot.
        # The prefix-cache counters are not part of BaseKVCacheManager (yet): 0 where absent.
        self.stats = EngineStats(
            num_running=engine.scheduler.num_running,
            num_waiting=engine.scheduler.num_waiting,
            num_requests=engine.num_unfinished_requests,
            num_kv_blocks=kv.num_blocks,
            num_free_kv_blocks=kv.num_free_blocks,
            kv_cache_usage=kv.usage,
            prefix_cache_hit_rate=getattr(kv, "prefix_hit_rate", 0.0),
            prefix_cache_queried_tokens=getattr(kv, "num_queried_tokens", 0),
            prefix_cache_hit_tokens=getattr(kv, "num_hit_tokens", 0),
            num_steps=self._num_steps,
            num_preemptions=engine.scheduler.num_preemptions,
            speculation=engine.speculator.stats.to_dict() if engine.speculator is not None else None,
        )


def _reject(command, error: BaseException) -> None:
    future = getattr(command, "accepted", None) or getattr(command, "result", None)
    if future is not None and future.set_running_or_notify_cancel():
        future.set_exception(error)


def _deliver_soon(loop: asyncio.AbstractEventLoop, items: list[tuple[RequestStream, Any]]) -> None:
    def deliver() -> None:
        for stream, item in items:
            stream._queue.put_nowait(item)

    try:
        loop.call_soon_threadsafe(deliver)
    except RuntimeError:
        pass  # that event loop is closed: nobody is left to read these outputs
