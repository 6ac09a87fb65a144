"""The router and the executor behind the interface ``ember.server``'s app drives (that of
``AsyncLLMEngine``): ``ember spot serve`` is ``ember serve`` over a spot deployment."""

from __future__ import annotations

import asyncio
import concurrent.futures

from ember.engine.async_engine import EngineDeadError, EngineStats
from ember.spot.live.executor import LiveSpotExecutor
from ember.spot.live.router import RoutedStream, SpotRouter


class SpotFrontEnd:
    def __init__(self, router: SpotRouter, executor: LiveSpotExecutor) -> None:
        self.router = router
        self.executor = executor
        self.engine = router.engine  # the served model's tokenizer, config, context length
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @property
    def stats(self) -> EngineStats:
        spot = self.router.router_stats.summary() | {
            "reconfigurations": len(self.executor.decisions),
            "replicas": len(self.router.replicas),
            "instances": len(self.executor.instances),
        }
        return EngineStats(num_requests=self.router.num_requests, num_steps=self.router.num_steps, spot=spot)

    @property
    def is_running(self) -> bool:
        return self.router.is_running and self._task is not None and not self._task.done()

    @property
    def num_steps(self) -> int:
        return self.router.num_steps

    def start(self) -> None:
        """Start the executor on the running event loop (the server's)."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._task = self._loop.create_task(self.executor.run(until=self._stop), name="spot-executor")

    async def add_request(self, request_id: str, prompt, params, *, arrival_time=None) -> RoutedStream:
        if not self.is_running:
            raise EngineDeadError("the spot deployment is not running")
        return await self.router.add_request(request_id, prompt, params, arrival_time=arrival_time)

    async def call(self, fn):
        return await self.router.call(fn)

    def abort_all(self, reason: str, *, stop_admitting: bool = False) -> None:
        self.router.abort_all(reason, stop_admitting=stop_admitting)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the executor and every replica; callable from any thread (idempotent)."""
        if self._loop is None or self._loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            raise RuntimeError("SpotFrontEnd.shutdown blocks: call it from another thread (asyncio.to_thread)")
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            future.result(timeout)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass

    async def _shutdown(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        await self.executor.shutdown()
        self.router.shutdown()
