"""The live executor: the same ``SpotController`` as the simulator, carried out on Ray.

    notices (trace replay, cloud metadata, node loss) -> ClusterView from live state
    -> controller.decide(view) -> Reconfiguration -> here:
       start the new replicas (engines of the new tp x pp) on their instances, while the
       old ones serve on; at ``stop_by`` move each stopping replica's requests to the replica
       that inherits its batch (with KV under ``migrate_kv``, recomputed otherwise, from
       scratch under ``restart``); stop the old replicas; remove an instance at its deadline.

A replica runs on the instance of its first device (stage 0, tensor rank 0) with its ranks as
worker processes there. Requests on an instance that disappears without notice are resumed
from the router's checkpoints. Every decision is logged in one line and kept in ``decisions``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ember.spot.controller import ClusterView, Reconfiguration, SpotController
from ember.spot.live.replica import replica_actor
from ember.spot.live.router import SpotRouter
from ember.spot.notices import NoticeSource, PreemptionNotice

logger = logging.getLogger(__name__)


@dataclass
class Decision:
    """One executed reconfiguration, for logs, metrics and the simulator comparison."""

    time_s: float
    reason: str
    config: str | None  # ParallelConfig.short(), None when nothing can serve
    mode: str
    moved: int = 0  # requests moved off stopping replicas
    kv_bytes: int = 0
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    est_ready_s: float = 0.0  # the controller's estimate, seconds after the decision
    ready_s: float = 0.0  # measured
    inflight_tokens: dict = field(default_factory=dict)  # what the view said, per old replica

    def line(self) -> str:
        return (
            f"[spot] t={self.time_s:.1f}s {self.reason}: -> {self.config or 'nothing'} mode={self.mode} "
            f"start={','.join(self.started) or '-'} stop={','.join(self.stopped) or '-'} moved={self.moved} "
            f"kv={self.kv_bytes / 2**20:.1f}MiB ready={self.ready_s:.1f}s (est {self.est_ready_s:.1f}s)"
        )


class LiveSpotExecutor:
    def __init__(
        self,
        *,
        controller: SpotController,
        router: SpotRouter,
        cluster: Any,  # LocalRayCluster, or anything with add_instance / remove_instance
        notices: NoticeSource,
        model: str,
        engine_options: dict,
        required_rate: float = 0.0,
        poll_interval_s: float = 0.05,
        min_margin_s: float = 2.0,
        on_serving: Callable[[float], None] | None = None,
    ) -> None:
        self.controller = controller
        self.router = router
        self.cluster = cluster
        self.notices = notices
        self.model = model
        self.engine_options = dict(engine_options)
        self.required_rate = required_rate
        self.poll_interval_s = poll_interval_s
        self.instances: list[str] = []  # alive, in arrival order
        self.dying: dict[str, float] = {}  # instance -> deadline (monotonic s)
        self.names: dict[int, str] = {}  # the controller's replica index -> router replica name
        self.handles: dict[str, Any] = {}
        self.hosts: dict[str, str] = {}  # replica name -> instance
        self.spans: dict[str, frozenset[str]] = {}  # replica name -> the instances of its devices
        self.rank_instances: dict[str, list[str]] = {}  # replica name -> each rank's instance
        self.placement: dict = {}  # device -> position, as the last decision placed them
        self.decisions: list[Decision] = []
        self._epoch = 0
        self.started_at = time.monotonic()  # the decisions' clock starts here
        self._lost: list[str] = []
        self.step_samples: list = []  # the stopped replicas' step logs (``ReplicaServer.step_log``)
        self.min_margin_s = min_margin_s
        router.on_replica_lost = self._replica_lost
        self.on_serving = on_serving  # called once, with the time, when the first fleet serves
        self.serving_at: float | None = None

    @property
    def stop_margin_s(self) -> float:
        return max([self.min_margin_s, *(2 * p for p in self.router.router_stats.pauses_s)])

    # ------------------------------------------------------------------ loop
    async def run(self, *, until: asyncio.Event | None = None) -> None:
        """Poll notices and react until ``until`` is set (or the task is cancelled).

        The physical world is applied at once (an instance arrives, dies, reaches its
        deadline); decisions run one at a time, as the controller expects, and a change that
        comes during one is decided on as soon as it ends."""
        pending, task = ["start"], None
        first = True
        while until is None or not until.is_set():
            now = time.monotonic()
            pending += [r for r in map(self._apply, self.notices.poll(now)) if r]
            pending += [r for r in [self._expire(now)] if r]
            pending += [f"replica {name} lost" for name in self._take_lost()]
            if task is not None and task.done():
                task.result()  # NOTE: an executor bug surfaces here instead of being dropped
                task = None
            if pending and task is None:
                reason, pending = "; ".join(pending), []
                task = asyncio.create_task(self.react(reason, is_initial=first))
                first = False
            await asyncio.sleep(self.poll_interval_s)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def react(self, reason: str, *, is_initial: bool = False) -> Decision | None:
        view = await self._view(is_initial)
        reconfiguration = self.controller.decide(view)
        if reconfiguration is None:
            return None
        decision = await self._execute(reconfiguration, reason, view)
        if self.serving_at is None and self.router.replicas:
            self.serving_at = time.monotonic()
            if self.on_serving is not None:
                self.on_serving(self.serving_at)
        return decision

    # ------------------------------------------------------------ notices
    def _apply(self, notice: PreemptionNotice) -> str | None:
        iid = notice.instance_id
        if notice.kind == "arrive" and iid not in self.instances:
            self.cluster.add_instance(iid)
            self.instances.append(iid)
            return f"{iid} arrived"
        if notice.kind == "preempt" and iid in self.instances and iid not in self.dying:
            self.dying[iid] = notice.deadline_s
            return f"{iid} preempted (deadline in {notice.deadline_s - time.monotonic():.1f}s)"
        if notice.kind == "terminated" and iid in self.instances:
            self._remove(iid)
            return f"{iid} terminated without notice"
        return None

    def _expire(self, now: float) -> str | None:
        gone = [iid for iid, deadline in self.dying.items() if deadline <= now]
        for iid in gone:
            self._remove(iid)
        return f"{','.join(gone)} reached the deadline" if gone else None

    def _remove(self, iid: str) -> None:
        self.dying.pop(iid, None)
        if iid in self.instances:
            self.instances.remove(iid)
        self.cluster.remove_instance(iid)
        for name, span in list(self.spans.items()):
            if iid in span:
                # NOTE: a replica is lost with any of its devices' instances, not only its host's
                # (there its actor dies with the node; elsewhere it is killed here, its ranks with it)
                del self.spans[name]
                self.hosts.pop(name, None)
                handle = self.handles.get(name)
                self.router.mark_lost(name)
                if handle is not None:
                    import ray

                    ray.kill(handle)

    def _replica_lost(self, name: str) -> None:
        self._lost.append(name)
        for index, n in list(self.names.items()):
            if n == name:
                del self.names[index]
        self.handles.pop(name, None)

    def _take_lost(self) -> list[str]:
        lost, self._lost = self._lost, []
        return lost

    # ------------------------------------------------------------- decisions
    async def _view(self, is_initial: bool) -> ClusterView:
        inflight, progress = {}, {}
        for index, name in self.names.items():
            try:
                load = await self.handles[name].load.remote()
            except Exception as exc:  # noqa: BLE001 - a replica that just died has nothing to move
                logger.warning("replica %s did not report its load: %s", name, exc)
                continue
            inflight[index], progress[index] = load.inflight_tokens, load.committed_tokens
        return ClusterView(
            now_s=time.monotonic(),
            instances=tuple(self.instances),
            dying=dict(self.dying),
            inflight_tokens=inflight,
            progress=progress,
            required_rate=self.required_rate,
            is_initial=is_initial,
        )

    async def _execute(self, rc: Reconfiguration, reason: str, view: ClusterView) -> Decision:
        start = time.monotonic()
        decision = Decision(
            time_s=start - self.started_at,
            reason=reason,
            config=rc.new_config.short() if rc.new_config is not None else None,
            mode=rc.mode,
            est_ready_s=max(rc.ready_at.values(), default=start) - start,
            inflight_tokens=dict(view.inflight_tokens),
        )
        self._epoch += 1
        # a new replica that maps to an old one that does not stop is that replica, serving on
        kept = {
            r: old
            for r, old in rc.replica_map.items()
            if old is not None and old not in rc.stop_replicas and old in self.names
        }
        # NOTE: a device holds one replica at a time (on a GPU its memory does): a new replica
        # on a device of a stopping one starts after that one stopped; the others start now,
        # while the old replicas serve on.
        busy = {d for d, p in self.placement.items() if p.replica in rc.stop_replicas}
        new_names: dict[int, str] = {r: self.names[old] for r, old in kept.items()}
        now_list, later = [], []
        if rc.new_config is not None:
            for r in range(rc.new_config.dp):
                if r in kept:
                    continue
                devices = {d for d, p in rc.placement.items() if p.replica == r}
                (later if devices & busy else now_list).append(r)
        new_names.update({r: self._launch(rc, r) for r in now_list})
        decision.started = [new_names[r] for r in now_list]
        new_names = await self._await_ready(new_names, decision.started)
        # NOTE: the controller stops "just in time" by its estimate of the move; live, a move
        # also waits for the replica's current step and the actor calls, so stop earlier by
        # what moves have measured here (twice the slowest so far, at least min_margin_s).
        await asyncio.sleep(max(0.0, rc.stop_by - self.stop_margin_s - time.monotonic()))
        stopping = [self.names[old] for old in sorted(rc.stop_replicas) if old in self.names]
        for name in stopping:
            self.router.retire(name)
        for old in sorted(rc.stop_replicas):
            name = self.names.get(old)
            if name is None or name in new_names.values():
                continue
            heir_index = next((r for r, o in rc.replica_map.items() if o == old and r not in kept), None)
            heir = new_names.get(heir_index) if heir_index is not None else None
            target = heir if heir in self.router.replicas else self.router.least_loaded(exclude=stopping)
            before = self.router.router_stats.migrated_kv_bytes
            if target is None:  # the heir waits for this replica's devices: its batch waits too
                decision.moved += await self.router.park(name, mode=rc.mode)
            elif rc.mode == "restart":
                decision.moved += await self.router.restart(name, target)
            else:
                # NOTE: a survivor that serves on adopts the batch with its KV too (continuous
                # batching; a full cache there falls back to recompute), where the paper's
                # static batches could only hand a batch to a new replica.
                decision.moved += await self.router.migrate(name, target, with_kv=rc.mode == "migrate_kv")
            decision.kv_bytes += self.router.router_stats.migrated_kv_bytes - before
            await self._stop_replica(name)
            decision.stopped.append(name)
        late = {r: self._launch(rc, r) for r in later}
        new_names.update(late)
        decision.started += list(late.values())
        self.names = await self._await_ready(new_names, list(late.values()))
        self.placement = dict(rc.placement)
        decision.ready_s = time.monotonic() - start
        self.decisions.append(decision)
        logger.info(decision.line())
        return decision

    def _launch(self, rc: Reconfiguration, r: int) -> str:
        """Start new replica ``r`` of ``rc`` on its devices' instances; returns its name."""
        cfg = rc.new_config
        options = {**self.engine_options, "tensor_parallel_size": cfg.tp, "pipeline_parallel_size": cfg.pp}
        host = next(d.instance_id for d, p in rc.placement.items() if p == (r, 0, 0))
        name = f"e{self._epoch}r{r}"
        # each rank on its device's instance (rank = stage * tp + tensor rank)
        by_rank = {p.pp_stage * cfg.tp + p.tp_rank: d.instance_id for d, p in rc.placement.items() if p.replica == r}
        ranks = [by_rank[k] for k in range(cfg.tp * cfg.pp)]
        handle = replica_actor(host).remote(self.model, options, name=name, rank_instances=ranks)
        self.rank_instances[name] = ranks
        self.handles[name], self.hosts[name] = handle, host
        self.spans[name] = frozenset(d.instance_id for d, p in rc.placement.items() if p.replica == r)
        return name

    async def _await_ready(self, names: dict[int, str], starting: list[str]) -> dict[int, str]:
        """Wait for ``starting`` to load and route to them; returns ``names`` without those
        that did not start (their instance went while they loaded)."""
        started = await asyncio.gather(*(self.handles[n].ready.remote() for n in starting), return_exceptions=True)
        for name, ready in zip(starting, started):
            if isinstance(ready, BaseException):
                logger.warning("replica %s did not start: %s", name, ready)
                self.handles.pop(name, None)
                names = {r: n for r, n in names.items() if n != name}
                self._lost.append(name)
                continue
            self.router.add_replica(name, self.handles[name])
        return names

    async def _stop_replica(self, name: str) -> None:
        import ray

        if self.router.owned(name):
            return  # NOTE: nowhere to move them: the router resumes them when a replica comes
        await self.router.remove_replica(name)
        self.spans.pop(name, None)
        self.hosts.pop(name, None)
        handle = self.handles.pop(name, None)
        if handle is not None:
            try:
                self.step_samples += await handle.step_log.remote()
                await handle.close.remote()
            except Exception:  # noqa: BLE001 - already gone with its instance
                pass
            ray.kill(handle)

    async def shutdown(self) -> None:
        self.router.abort_all("the spot deployment is shutting down")
        for name in list(self.handles):
            await self._stop_replica(name)
        self.notices.close()
