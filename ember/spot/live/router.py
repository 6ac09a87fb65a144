"""The replica router: requests over replicas, and every client's stream kept across moves.

Each replica has a driver task that steps it while it owns requests and delivers the outputs
to the requests' streams. A move (``migrate``) holds both replicas between two steps,
exports the requests from one and imports them into the other; the heir's outputs are
cumulative like the first replica's, so the stream just goes on. A replica that dies with no
notice is recovered from checkpoints (every request's tokens and RNG state, no KV, taken every
``checkpoint_every`` steps): a survivor recomputes them and regenerates the tokens since the
checkpoint, which are the same tokens (greedy, or seeded: the router seeds every sampled
request), and a stream forwards only outputs that go past what it already delivered.

The router speaks the interface of ``AsyncLLMEngine`` that ``ember.server`` uses, so the
OpenAI front end serves a spot deployment unchanged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ember.core.sampling_params import SamplingParams
from ember.engine.async_engine import EngineDeadError, EngineStats, OutputStream
from ember.engine.migration import RequestSnapshot
from ember.engine.outputs import RequestOutput
from ember.errors import InvalidInputError

logger = logging.getLogger(__name__)


class RoutedStream(OutputStream):
    """One request's outputs, whichever replica serves it; each output is cumulative and the
    last has ``finished=True``."""

    def __init__(self, request_id: str, router: SpotRouter) -> None:
        super().__init__(request_id)
        self._router = router
        self.num_delivered_tokens = 0  # tokens of the first sequence delivered so far

    def deliver(self, output: RequestOutput) -> None:
        # NOTE: after a recovery the heir regenerates tokens this stream already delivered:
        # forward only outputs that go past them (or the last one).
        num_tokens = min(len(c.token_ids) for c in output.outputs)
        if output.finished or num_tokens > self.num_delivered_tokens:
            self.num_delivered_tokens = max(self.num_delivered_tokens, num_tokens)
            self._queue.put_nowait(output)

    def fail(self, error: BaseException) -> None:
        self._queue.put_nowait(error)

    def abort(self) -> None:
        if not self.finished:
            self.finished = True
            self._router.abort(self.request_id)


@dataclass
class _Tracked:
    prompt: Any
    params: SamplingParams
    arrival_time: float | None
    stream: RoutedStream
    replica: str | None = None
    checkpoint: RequestSnapshot | None = None


@dataclass
class RouterStats:
    """Counters for /metrics and the benchmark."""

    num_migrated: int = 0  # requests moved with their KV
    num_recomputed: int = 0  # requests moved without KV (their tokens recomputed)
    num_recovered: int = 0  # requests resumed from a checkpoint after a replica died
    num_restarted: int = 0  # requests restarted from scratch (reparallelize / reroute)
    migrated_kv_bytes: int = 0
    pauses_s: list[float] = field(default_factory=list)  # per move, the time requests did not step

    def summary(self) -> dict[str, float]:
        """Counters and pause percentiles, for /metrics."""
        pauses = sorted(self.pauses_s)

        def quantile(q: float) -> float:
            return pauses[min(len(pauses) - 1, int(q * len(pauses)))] if pauses else 0.0

        return {
            "migrated_requests": self.num_migrated,
            "recomputed_requests": self.num_recomputed,
            "recovered_requests": self.num_recovered,
            "restarted_requests": self.num_restarted,
            "migrated_kv_bytes": self.migrated_kv_bytes,
            "migrations": len(pauses),
            "migration_seconds": sum(pauses),
            "pause_p50_seconds": quantile(0.5),
            "pause_p99_seconds": quantile(0.99),
        }


class SpotRouter:
    def __init__(self, model_info: Any, *, checkpoint_every: int = 8, seed: int = 0) -> None:
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
        self.engine = model_info  # tokenizer, max_model_len, arch, generation_config (for the server)
        self.checkpoint_every = checkpoint_every
        self.stats = EngineStats()
        self.router_stats = RouterStats()
        self.replicas: dict[str, Any] = {}  # name -> actor handle
        self._requests: dict[str, _Tracked] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._orphans: list[str] = []  # requests waiting for any replica
        self._parked: list[tuple[float, set[str]]] = []  # (when, which) per parked batch, until placed
        self._retiring: set[str] = set()  # replicas being emptied: no new request goes there
        self._seed_rng = random.Random(seed)
        self._closed_reason: str | None = None
        self._num_steps = 0
        self.on_replica_lost: Callable[[str], None] | None = None  # the executor's hook

    # ----------------------------------------------------------- the server's interface
    def start(self) -> None:
        """Drivers start with their replicas (``add_replica``)."""

    @property
    def is_running(self) -> bool:
        return self._closed_reason is None

    @property
    def num_steps(self) -> int:
        return self._num_steps

    @property
    def num_requests(self) -> int:
        return len(self._requests)

    async def add_request(self, request_id: str, prompt, params: SamplingParams, *, arrival_time=None) -> RoutedStream:
        if self._closed_reason is not None:
            raise EngineDeadError(self._closed_reason)
        if request_id in self._requests:
            raise InvalidInputError(f"request id {request_id!r} is already in use", param="request_id")
        if not params.is_greedy and params.seed is None:
            # NOTE: a seed of the router's, so any replica that resumes the request regenerates
            # exactly the tokens the client has already seen.
            params = dataclasses.replace(params, seed=self._seed_rng.randrange(2**62))
        stream = RoutedStream(request_id, self)
        tracked = _Tracked(prompt, params, arrival_time, stream)
        self._requests[request_id] = tracked
        try:
            await self._place(request_id)
        except BaseException:
            self._requests.pop(request_id, None)
            raise
        return stream

    async def call(self, fn):
        raise EngineDeadError("debug calls into an engine are not available behind the spot router")

    def abort(self, request_id: str) -> None:
        tracked = self._requests.pop(request_id, None)
        if tracked is not None and tracked.replica in self.replicas:
            self.replicas[tracked.replica].abort.remote(request_id)

    def abort_all(self, reason: str, *, stop_admitting: bool = False) -> None:
        if stop_admitting:
            self._closed_reason = reason
        for rid in list(self._requests):
            self._requests[rid].stream.fail(EngineDeadError(reason))
            self.abort(rid)

    def shutdown(self, timeout: float = 10.0) -> None:
        self._closed_reason = self._closed_reason or "the spot deployment is shutting down"
        for task in self._tasks.values():
            task.cancel()

    # ------------------------------------------------------------------ replicas
    def add_replica(self, name: str, handle) -> None:
        if name in self.replicas:
            raise ValueError(f"replica {name!r} is already routed to")
        self.replicas[name] = handle
        self._locks[name] = asyncio.Lock()
        self._wake[name] = asyncio.Event()
        self._tasks[name] = asyncio.get_running_loop().create_task(self._drive(name), name=f"drive-{name}")
        self._wake[name].set()
        orphans, self._orphans = self._orphans, []
        for rid in orphans:
            asyncio.get_running_loop().create_task(self._place(rid))

    async def remove_replica(self, name: str) -> None:
        """Stop routing to an (empty) replica; its requests must have moved first."""
        owned = self.owned(name)
        if owned:
            raise RuntimeError(f"replica {name!r} still serves {len(owned)} requests")
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
        self.replicas.pop(name, None)
        self._locks.pop(name, None)
        self._wake.pop(name, None)
        self._retiring.discard(name)

    def retire(self, name: str) -> None:
        """No new request goes to ``name`` (it is about to be emptied and stopped)."""
        if name in self.replicas:
            self._retiring.add(name)

    def owned(self, name: str) -> list[str]:
        return [rid for rid, t in self._requests.items() if t.replica == name]

    async def migrate(self, src: str, dst: str, request_ids: list[str] | None = None, *, with_kv: bool = True) -> int:
        """Move requests (all of ``src``'s by default) between two steps; returns how many."""
        ids = self.owned(src) if request_ids is None else list(request_ids)
        if not ids or src == dst:
            return 0
        loop = asyncio.get_running_loop()
        first, second = sorted((src, dst))  # NOTE: one lock order, so two moves never deadlock
        async with self._locks[first], self._locks[second]:
            start = loop.time()
            if request_ids is None:
                ids = self.owned(src)  # NOTE: and those placed there while the locks were held
            snapshots = self.replicas[src].export.remote(ids, with_kv)
            # NOTE: the heir gets the object reference: the snapshots (and KV) travel through
            # Ray's object store, not through the router.
            try:
                await self.replicas[dst].import_.remote(snapshots)
            except Exception as exc:  # noqa: BLE001
                if not _is_actor_death(exc) and not _is_actor_death(getattr(exc, "cause", None)):
                    raise
                # NOTE: one side died mid-move (its instance went early): the drivers see it and
                # recover from checkpoints; nothing is lost.
                logger.warning("move %s -> %s cut short: %s", src, dst, type(exc).__name__)
                return 0
            self.router_stats.pauses_s.append(loop.time() - start)
        if with_kv:
            moved = await snapshots
            self.router_stats.migrated_kv_bytes += sum(s.kv_bytes for s in moved)
            self.router_stats.num_migrated += len(ids)
        else:
            self.router_stats.num_recomputed += len(ids)
        for rid in ids:
            if rid in self._requests:
                self._requests[rid].replica = dst
        self._wake[dst].set()
        return len(ids)

    async def restart(self, src: str, dst: str) -> int:
        """Move ``src``'s requests to ``dst`` from scratch (the baselines' restart): ``dst``
        regenerates every token; the streams pass on only the new ones."""
        first, second = sorted((src, dst))
        async with self._locks[first], self._locks[second]:
            ids = self.owned(src)
            for rid in ids:
                tracked = self._requests[rid]
                await self.replicas[src].abort.remote(rid)
                tracked.replica, tracked.checkpoint = dst, None
                await self.replicas[dst].add.remote(rid, tracked.prompt, tracked.params, tracked.arrival_time)
        self.router_stats.num_restarted += len(ids)
        self._wake[dst].set()
        return len(ids)

    async def park(self, src: str, *, mode: str) -> int:
        """Take ``src``'s requests out to wait for the next replica (the one that takes over
        ``src``'s devices, once ``src`` has stopped): ``mode`` "migrate_kv" keeps their state with
        KV (through the object store), "recompute" their state without KV, "restart" nothing.
        ``add_replica`` places them. Returns how many."""
        if mode not in ("migrate_kv", "recompute", "restart"):
            raise ValueError(f"park: mode must be migrate_kv, recompute or restart, got {mode!r}")
        ids = self.owned(src)
        if not ids:
            return 0
        loop = asyncio.get_running_loop()
        async with self._locks[src]:
            start = loop.time()
            ids = self.owned(src)  # NOTE: and those placed there while the lock was held
            if mode == "restart":
                snapshots = []
                for rid in ids:
                    await self.replicas[src].abort.remote(rid)
            else:
                try:
                    snapshots = await self.replicas[src].export.remote(ids, mode == "migrate_kv")
                except Exception as exc:  # noqa: BLE001
                    if not _is_actor_death(exc):
                        raise
                    return 0  # NOTE: died meanwhile: its driver recovers them from checkpoints
        # NOTE: the batch's pause lasts until its last request is placed again (see _placed)
        self._parked.append((start, set(ids)))
        by_id = {snap.request_id: snap for snap in snapshots}
        for rid in ids:
            tracked = self._requests.get(rid)
            if tracked is None:
                continue
            tracked.replica, tracked.checkpoint = None, by_id.get(rid)
            self._orphans.append(rid)
        if mode == "migrate_kv":
            self.router_stats.migrated_kv_bytes += sum(snap.kv_bytes for snap in snapshots)
            self.router_stats.num_migrated += len(ids)
        elif mode == "recompute":
            self.router_stats.num_recomputed += len(ids)
        else:
            self.router_stats.num_restarted += len(ids)
        return len(ids)

    def least_loaded(self, exclude=()) -> str | None:
        """The replica with the fewest requests (ties: by name), outside ``exclude``."""
        names = [n for n in self.replicas if n not in exclude and n not in self._retiring]
        return min(names, key=lambda n: (len(self.owned(n)), n)) if names else None

    # ----------------------------------------------------------------- internals
    async def _place(self, request_id: str) -> None:
        tracked = self._requests.get(request_id)
        if tracked is None:
            return
        name = self.least_loaded()
        if name is None:
            # NOTE: no replica serves now (the fleet is starting or reconfiguring): the request
            # waits, as in a queue, for the next replica that comes (add_replica places it)
            self._orphans.append(request_id)
            return
        tracked.replica = name
        try:
            async with self._locks[name]:
                if tracked.checkpoint is not None:
                    await self.replicas[name].import_.remote([tracked.checkpoint])
                else:
                    await _unwrap(
                        self.replicas[name].add.remote(request_id, tracked.prompt, tracked.params, tracked.arrival_time)
                    )
        except Exception as exc:  # noqa: BLE001
            if not _is_actor_death(exc):
                raise
            await self._recover(name)  # NOTE: places this request (and the replica's others) elsewhere
            return
        self._wake[name].set()
        self._placed(request_id)

    def _placed(self, request_id: str) -> None:
        now = asyncio.get_running_loop().time()
        for start, waiting in self._parked:
            waiting.discard(request_id)
            if not waiting:
                self.router_stats.pauses_s.append(now - start)
        self._parked = [(start, waiting) for start, waiting in self._parked if waiting]

    async def _drive(self, name: str) -> None:
        handle, steps = self.replicas[name], 0
        while True:
            if not self.owned(name):
                self._wake[name].clear()
                await self._wake[name].wait()
                continue
            try:
                async with self._locks[name]:
                    outputs = await handle.step.remote()
                    steps += 1
                    checkpoints = await handle.checkpoint.remote() if steps % self.checkpoint_every == 0 else []
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                if not _is_actor_death(exc):
                    # NOTE: an engine bug, not a lost instance: the replica's requests fail.
                    logger.error("replica %s failed a step: %s", name, exc)
                    for rid in self.owned(name):
                        self._requests.pop(rid).stream.fail(EngineDeadError(f"replica {name} failed: {exc}"))
                    continue
                logger.warning("replica %s is gone (%s); recovering its requests", name, type(exc).__name__)
                await self._recover(name)
                return
            self._num_steps += 1
            for snap in checkpoints:
                if snap.request_id in self._requests:
                    self._requests[snap.request_id].checkpoint = snap
            for output in outputs:
                tracked = self._requests.get(output.request_id)
                if tracked is None or tracked.replica != name:
                    continue
                tracked.stream.deliver(output)
                if output.finished:
                    del self._requests[output.request_id]

    def mark_lost(self, name: str) -> None:
        """The replica's instance is gone (the executor knows before a call fails)."""
        if name in self.replicas:
            asyncio.get_running_loop().create_task(self._recover(name))

    async def _recover(self, name: str) -> None:
        if name not in self.replicas:
            return  # NOTE: already recovered (the driver and the executor may both notice)
        lost = self.owned(name)
        task = self._tasks.pop(name, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        handle = self.replicas.pop(name, None)
        self._locks.pop(name, None)
        self._wake.pop(name, None)
        self._retiring.discard(name)
        if handle is not None:
            import ray

            ray.kill(handle)  # NOTE: a replica whose engine lost a rank is alive but useless
        if self.on_replica_lost is not None:
            self.on_replica_lost(name)
        for rid in lost:
            self._requests[rid].replica = None
            self.router_stats.num_recovered += 1
            await self._place(rid)


def _is_actor_death(exc: BaseException | None) -> bool:
    """The replica is gone: its actor died (with its instance), or its engine lost a rank (on
    another instance that went) and cannot step again."""
    import ray

    from ember.errors import WorkerError

    deaths = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError)
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(getattr(exc, "cause", None), WorkerError):
        return True
    return isinstance(exc, deaths)


async def _unwrap(ref):
    """Await a Ray call; a user error raised in the actor comes out as itself."""
    import ray

    try:
        return await ref
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, Exception) else exc
        raise cause from None
