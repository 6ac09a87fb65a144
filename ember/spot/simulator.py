"""Trace-driven discrete-event simulator: one executor of the controller's decisions.

It replays an availability trace (preemption notices a grace period before each removal) and a
request-arrival trace against replicas whose batch timing comes from the latency profile. Each
replica runs one batch at a time; an idle replica takes the largest power-of-two batch (up to the
cap) from the head of the queue, as SpotServe's API server does. Requests are never dropped: an
interrupted batch resumes on migrated KV, recomputes its committed tokens, or restarts.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field

from ember.spot.arrivals import Arrival
from ember.spot.config import ParallelConfig
from ember.spot.controller import ClusterView, Reconfiguration, SpotController
from ember.spot.profile import BatchLatency, LatencyProfile
from ember.spot.recovery import BatchProgress, plan_stop
from ember.spot.replica import SimBatch, SimReplica, SimRequest
from ember.spot.results import RunRecord
from ember.spot.traces import AvailabilityTrace

# event priorities at equal times: batches end before a switch applies, before anything else
_BATCH, _APPLY, _OTHER = 0, 1, 2


@dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    """Knobs of one simulation run."""

    grace_period_s: float = 30.0
    output_len: int = 128
    max_batch_size: int = 4
    required_rate: float = 1.0
    ondemand_fleet: int = 0  # > 0: the `ondemand` policy's fixed fleet, never preempted
    # the replicas share this many cores (a live run's instances on one machine): a batch that
    # starts while k replicas run (itself included) runs max(1, k / shared_cores) times slower
    shared_cores: float | None = None

    def __post_init__(self) -> None:
        if self.grace_period_s < 0:
            raise ValueError(f"SimulationConfig.grace_period_s must be >= 0, got {self.grace_period_s}")
        for name in ("output_len", "max_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SimulationConfig.{name} must be positive, got {getattr(self, name)}")
        if self.required_rate < 0:
            raise ValueError(f"SimulationConfig.required_rate must be >= 0, got {self.required_rate}")
        if self.shared_cores is not None and not self.shared_cores > 0:
            raise ValueError(f"SimulationConfig.shared_cores must be > 0, got {self.shared_cores}")


@dataclass
class _State:
    alive: dict[str, float] = field(default_factory=dict)  # instance -> added at
    dying: dict[str, float] = field(default_factory=dict)  # instance -> deadline
    spans: list[tuple[str, float, float, bool]] = field(default_factory=list)  # (id, start, end, on-demand)
    ondemand: dict[str, float] = field(default_factory=dict)


class Simulator:
    """Replays `trace` and `arrivals` under `controller`; `run()` returns a `RunRecord`."""

    def __init__(
        self,
        *,
        trace: AvailabilityTrace,
        arrivals: list[Arrival],
        controller: SpotController,
        profile: LatencyProfile,
        config: SimulationConfig,
    ) -> None:
        self.trace, self.controller, self.profile, self.cfg = trace, controller, profile, config
        self.requests = [SimRequest(a) for a in arrivals if a.time_s < trace.end_s]
        self.queue: deque[SimRequest] = deque()
        self.replicas: dict[int, SimReplica] = {}
        self.draining: list[SimReplica] = []  # stopped by a reconfiguration, not yet handed over
        self.state = _State()
        self.rate = config.required_rate
        self.heap: list = []
        self._seq = itertools.count()
        self._tokens = itertools.count()
        self.now = 0.0
        self.blocked_until = 0.0
        self.pending_decision = False
        self.record = RunRecord(policy=controller.policy)

    # -- event plumbing ----------------------------------------------------------------------
    def _push(self, t: float, prio: int, kind: str, payload=None) -> None:
        heapq.heappush(self.heap, (t, prio, next(self._seq), kind, payload))

    def run(self) -> RunRecord:
        for req in self.requests:
            self._push(req.arrival.time_s, _OTHER, "arrival", req)
        if self.cfg.ondemand_fleet:
            ids = tuple(f"od{k}" for k in range(self.cfg.ondemand_fleet))
            self.state.ondemand = {i: 0.0 for i in ids}
            self._push(0.0, _OTHER, "decide", None)
        else:
            for ev in self.trace.events:
                if ev.kind == "remove":
                    notice = max(0.0, ev.time_s - self.cfg.grace_period_s)
                    self._push(notice, _OTHER, "notice", ev)
                self._push(ev.time_s, _OTHER, ev.kind, ev)
        while self.heap:
            t, _, _, kind, payload = heapq.heappop(self.heap)
            self.now = t
            getattr(self, f"_on_{kind}")(payload)
        return self._finish()

    def _view(self, *, is_initial: bool = False) -> ClusterView:
        inflight, progress = {}, {}
        # NOTE: replicas keep admitting batches until their stop, so every replica may hold a full
        # batch then: plan its KV at the cap (an upper bound, as SpotServe's mem_len is).
        prompt = self.requests[0].arrival.prompt_len if self.requests else 0
        for r in self.replicas.values():
            if r.batch is not None:
                reqs, committed = r.batch.requests, r.batch.progress.committed(self.now)
            elif r.resume is not None:
                reqs, committed = r.resume
            else:
                reqs, committed = [], 0
            inflight[r.rid] = max(len(reqs), self.cfg.max_batch_size) * (prompt + self.cfg.output_len)
            progress[r.rid] = committed
        instances = tuple(list(self.state.alive) + [i for i in self.state.ondemand if i not in self.state.alive])
        return ClusterView(
            now_s=self.now,
            instances=instances,
            dying=dict(self.state.dying),
            inflight_tokens=inflight,
            progress=progress,
            required_rate=self.rate,
            is_initial=is_initial,
        )

    # -- trace events ------------------------------------------------------------------------
    def _on_add(self, ev) -> None:
        for iid in ev.instance_ids:
            self.state.alive[iid] = self.now
        self.record.mark(self.now, "add")
        self._decide()

    def _on_rate(self, ev) -> None:
        self.rate = ev.required_rate
        self._decide()

    def _on_notice(self, ev) -> None:
        for iid in ev.instance_ids:
            if iid in self.state.alive:
                self.state.dying[iid] = ev.time_s
        self._decide()

    def _on_remove(self, ev) -> None:
        self.record.mark(self.now, "preempt")
        for iid in ev.instance_ids:
            start = self.state.alive.pop(iid, None)
            self.state.dying.pop(iid, None)
            if start is not None:
                self.state.spans.append((iid, start, self.now, False))
        lost = set(ev.instance_ids)
        failed = [r for r in [*self.replicas.values(), *self.draining] if r.instance_ids & lost]
        for r in failed:  # the controller did not get this replica off in time: its batch restarts
            if r.batch is not None:
                self._requeue(r.batch.requests, r.batch.progress.committed_at_start, front=True)
                self.record.restarted_tokens += len(r.batch.requests) * r.batch.progress.steps_done(self.now)
                r.batch = None
            for held in (r.resume, r.interrupted):  # committed tokens survive, their KV does not
                if held is not None:
                    self.record.recomputed_tokens += held[1] * len(held[0])
                    self._requeue(*held, front=True)
            r.resume = r.interrupted = None
            r.stopping = True
        if failed:
            self._decide()

    def _on_decide(self, _payload) -> None:
        self._decide()

    def _decide(self) -> None:
        if self.now < self.blocked_until:
            if not self.pending_decision:
                self.pending_decision = True
                self._push(self.blocked_until, _OTHER, "decide", None)
            return
        self.pending_decision = False
        reconf = self.controller.decide(self._view(is_initial=not self.replicas and self.now == 0.0))
        if reconf is not None:
            self._apply_decision(reconf)

    # -- carrying out a reconfiguration ------------------------------------------------------
    def _apply_decision(self, rc: Reconfiguration) -> None:
        """The new replica set takes over at once: continuing replicas keep serving under their new
        ids, new ones serve from their `ready_at`; old replicas that stop drain until `stop_by`,
        when their interrupted batches are handed over (`_on_handover`)."""
        old = self.replicas
        carried = {
            src: r
            for r, src in rc.replica_map.items()
            if src is not None and src in old and src not in rc.stop_replicas
        }
        self.record.reconfigurations.append(
            (
                self.now,
                rc.new_config.short() if rc.new_config else "none",
                rc.mode,
                rc.migration.est_s if rc.migration else 0.0,
                len(carried),
            )
        )
        self.blocked_until = max(rc.blocks_until, rc.stop_by, self.now)
        if not self.cfg.ondemand_fleet:
            self._sync_ondemand(rc.ondemand_instances)
        stop_by = max(self.now, rc.stop_by)
        resumed = rc.resumed_replicas
        draining = []
        for rid, r in sorted(old.items()):
            if rid in carried:
                continue
            # NOTE: an old replica neither continued nor listed as stopping stops at once.
            r.stopping, r.stop_by = True, (stop_by if rid in rc.stop_replicas else self.now)
            r.stop_mode = "migrate_kv" if rid in resumed else ("restart" if rc.mode == "restart" else "recompute")
            if r.resume is not None:
                r.interrupted, r.resume = r.resume, None
            if r.batch is not None:
                d = plan_stop(r.batch.progress, now=self.now, stop_by=r.stop_by)
                if not d.finishes:
                    self._push(d.stop_s, _BATCH, "batch_stop", (r, r.batch.token, d.committed))
            draining.append(r)
        by_replica: dict[int, set[str]] = {}
        for d, p in rc.placement.items():
            by_replica.setdefault(p.replica, set()).add(d.instance_id)
        self.replicas = {}
        for new_rid, ready in sorted(rc.ready_at.items()):
            src = rc.replica_map.get(new_rid)
            if src in carried:
                rep = old[src]
                rep.rid, rep.config = new_rid, rc.new_config
            else:
                rep = SimReplica(rid=new_rid, config=rc.new_config, ready_at=max(ready, self.now))
                self._push(rep.ready_at, _OTHER, "ready", rep)
            rep.instance_ids = frozenset(by_replica.get(new_rid, ()))
            self.replicas[new_rid] = rep
        self.draining.extend(draining)
        heir_of = {src: self.replicas[r] for r, src in rc.replica_map.items() if src in resumed and r in self.replicas}
        self._push(stop_by, _APPLY, "handover", [(r, heir_of.get(r.rid)) for r in draining])
        self._dispatch()

    def _on_handover(self, pairs: list[tuple[SimReplica, SimReplica | None]]) -> None:
        """Stopped replicas give their batches to the replica inheriting their KV, or back to the
        queue with their committed tokens (recomputed), or from token 0 (restart)."""
        for r, heir in pairs:
            self.draining.remove(r)
            if r.batch is not None:
                # NOTE: cannot happen when stops are planned before `stop_by`; keep the committed tokens anyway
                r.interrupted, r.batch = (r.batch.requests, r.batch.progress.committed(self.now)), None
            if r.interrupted is None:
                continue
            (reqs, committed), r.interrupted = r.interrupted, None
            if heir is not None and not heir.stopping and heir.resume is None and self.replicas.get(heir.rid) is heir:
                heir.resume = (reqs, committed)
                self.record.resumed_tokens += committed * len(reqs)
            elif r.stop_mode == "restart":
                self.record.restarted_tokens += committed * len(reqs)
                self._requeue(reqs, 0, front=True)
            else:
                self.record.recomputed_tokens += committed * len(reqs)
                self._requeue(reqs, committed, front=True)
        self._dispatch()

    def _sync_ondemand(self, wanted: tuple[str, ...]) -> None:
        for iid in wanted:
            if iid not in self.state.ondemand:
                self.state.ondemand[iid] = self.now
        for iid in [i for i in self.state.ondemand if i not in wanted]:
            self.state.spans.append((iid, self.state.ondemand.pop(iid), self.now, True))

    # -- requests and batches ----------------------------------------------------------------
    def _requeue(self, reqs: list[SimRequest], committed: int, *, front: bool) -> None:
        for req in reqs:
            req.committed = committed
        if front:
            self.queue.extendleft(reversed(reqs))
        else:
            self.queue.extend(reqs)

    def _on_arrival(self, req: SimRequest) -> None:
        self.queue.append(req)
        self._dispatch()

    def _on_ready(self, rep: SimReplica) -> None:
        if self.replicas.get(rep.rid) is rep:
            self._dispatch()

    def _dispatch(self) -> None:
        # replicas that keep serving take work before those draining toward a stop
        for rep in sorted([*self.replicas.values(), *self.draining], key=lambda r: (r.stopping, r.rid)):
            if rep.batch is not None or rep.ready_at > self.now:
                continue
            if rep.stopping and (rep.stop_by is None or self.now >= rep.stop_by or rep.interrupted is not None):
                continue
            if rep.resume is not None:
                reqs, committed = rep.resume
                rep.resume = None
                self._start(rep, reqs, committed, with_prefill=False)
            elif self.queue:
                head = self.queue[0].committed
                n = 0
                while n < len(self.queue) and self.queue[n].committed == head and n < self.cfg.max_batch_size:
                    n += 1
                b = 1 << (n.bit_length() - 1)
                if rep.stopping:
                    # NOTE: admit only what finishes before the stop, unless the replica's batch will
                    # resume on migrated KV (then every token it commits is kept): a batch that is
                    # recomputed or restarted would waste the work a continuing replica could do.
                    probe = BatchProgress(
                        start_s=self.now,
                        committed_at_start=head,
                        output_len=self.cfg.output_len,
                        latency=self._latency(rep.config, b),
                        prefill_scale=(self.queue[0].arrival.prompt_len + head) / self.profile.profiled_input_len,
                    )
                    d = plan_stop(probe, now=self.now, stop_by=rep.stop_by)
                    if not d.finishes and (rep.stop_mode != "migrate_kv" or d.committed == head):
                        continue
                reqs = [self.queue.popleft() for _ in range(b)]
                self._start(rep, reqs, head, with_prefill=True)

    def _latency(self, c: ParallelConfig, batch_size: int):
        lat = self.profile.batch_latency(
            tp=c.tp, pp=c.pp, batch_size=batch_size, prefill_micro=c.prefill_micro, decode_micro=c.decode_micro
        )
        if self.cfg.shared_cores is None:
            return lat
        running = 1 + sum(r.batch is not None for r in [*self.replicas.values(), *self.draining])
        slow = max(1.0, running / self.cfg.shared_cores)
        return BatchLatency(prefill_s=lat.prefill_s * slow, step_s=lat.step_s * slow, fixed_s=lat.fixed_s * slow)

    def _start(self, rep: SimReplica, reqs: list[SimRequest], committed: int, *, with_prefill: bool) -> None:
        lat = self._latency(rep.config, len(reqs))
        prompt = reqs[0].arrival.prompt_len
        progress = BatchProgress(
            start_s=self.now,
            committed_at_start=committed,
            output_len=self.cfg.output_len,
            latency=lat,
            with_prefill=with_prefill,
            prefill_scale=(prompt + committed) / self.profile.profiled_input_len,
        )
        rep.batch = SimBatch(reqs, progress, next(self._tokens))
        self._push(progress.finish_s, _BATCH, "batch_done", (rep, rep.batch.token))
        if rep.stopping and rep.stop_by is not None:
            d = plan_stop(progress, now=self.now, stop_by=rep.stop_by)
            if not d.finishes:
                self._push(d.stop_s, _BATCH, "batch_stop", (rep, rep.batch.token, d.committed))

    def _on_batch_done(self, payload) -> None:
        rep, token = payload
        if rep.batch is None or rep.batch.token != token:
            return
        for req in rep.batch.requests:
            req.committed, req.finish_s = self.cfg.output_len, self.now
            self.record.add_latency(req.arrival.time_s, self.now - req.arrival.time_s)
        rep.batch = None
        self._dispatch()

    def _on_batch_stop(self, payload) -> None:
        rep, token, committed = payload
        if rep.batch is None or rep.batch.token != token:
            return
        assert rep.interrupted is None, "a replica holds one interrupted batch at most"
        rep.interrupted = (rep.batch.requests, committed)
        for req in rep.batch.requests:
            req.committed = committed
        rep.batch = None

    def _finish(self) -> RunRecord:
        end = max([self.trace.end_s] + [r.finish_s for r in self.requests if r.finish_s is not None])
        for iid, start in self.state.alive.items():
            self.state.spans.append((iid, start, end, False))
        for iid, start in self.state.ondemand.items():
            self.state.spans.append((iid, start, end, True))
        self.record.end_s = end
        self.record.num_requests = len(self.requests)
        self.record.num_lost = sum(1 for r in self.requests if r.finish_s is None)
        self.record.spans = list(self.state.spans)
        return self.record
