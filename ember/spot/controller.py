"""The control plane's decisions, apart from how they are carried out.

An executor (the simulator, later a Ray cluster) reports a `ClusterView` whenever instances come,
get a preemption notice or go, or the target rate changes; the controller answers with a typed
`Reconfiguration` (or None: keep going). Four policies share the interface:

- `spotserve`: optimizer picks a new configuration; KM device mapping; migration of weights and
  KV between GPUs. Replicas the plan leaves untouched serve on; the others' in-flight batches
  decode until just before the migration must start and resume at their next token (or recompute
  their committed tokens when the KV cannot move in time).
- `reparallelize`: optimizer picks a new configuration; every engine restarts and reloads its
  weights from storage; in-flight requests restart from scratch.
- `reroute`: (tp, pp, batch, M1, M2) fixed for the whole run, chosen once for the whole host
  pool; only dp follows the GPUs alive. Replicas that lose a GPU stop (requests restart
  elsewhere), whole new replicas load from storage onto free GPUs.
- `ondemand`: a fixed on-demand fleet sized for the rate; never preempted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from ember.spot.config import Device, ParallelConfig, Position
from ember.spot.hardware import InstanceSpec
from ember.spot.migration import MigrationPlan, MigrationPlanner
from ember.spot.optimizer import ParallelOptimizer
from ember.spot.placement import match_devices, rank_order_placement
from ember.spot.recovery import RecoveryMode, choose_recovery

Policy = Literal["spotserve", "reparallelize", "reroute", "ondemand"]
POLICIES: tuple[Policy, ...] = ("spotserve", "reparallelize", "reroute", "ondemand")


@dataclass(frozen=True, kw_only=True)
class ClusterView:
    """What the executor knows at `now_s`. Instances in arrival order; `dying` maps an instance
    to its deadline; `inflight_tokens[replica]` is the KV (tokens) of its running batch and
    `progress[replica]` its committed tokens."""

    now_s: float
    instances: tuple[str, ...]
    dying: Mapping[str, float] = field(default_factory=dict)
    inflight_tokens: Mapping[int, int] = field(default_factory=dict)
    progress: Mapping[int, int] = field(default_factory=dict)
    required_rate: float = 0.0
    is_initial: bool = False


@dataclass(frozen=True, kw_only=True)
class Reconfiguration:
    """Old replicas in `stop_replicas` decode until `stop_by`, then stop; their batches survive
    as `mode` says. New replica `r` continues old replica `replica_map[r]` (if that one does not
    stop: it never pauses) or inherits its interrupted batch (migrate_kv), and serves from
    `ready_at[r]` (which may come before `stop_by` for a replica on free GPUs)."""

    time_s: float
    policy: Policy
    new_config: ParallelConfig | None
    placement: Mapping[Device, Position]
    stop_replicas: frozenset[int]
    stop_by: float
    mode: RecoveryMode
    replica_map: Mapping[int, int | None]
    ready_at: Mapping[int, float]
    migration: MigrationPlan | None = None
    ondemand_instances: tuple[str, ...] = ()
    blocks_until: float = 0.0  # the executor holds further decisions until then

    @property
    def resumed_replicas(self) -> frozenset[int]:
        """Stopping old replicas whose batch resumes on migrated KV in the replica inheriting it."""
        if self.mode != "migrate_kv" or self.migration is None:
            return frozenset()
        return self.migration.kv_replicas & self.stop_replicas


class SpotController:
    """One controller for all four policies (they differ in a few decisions, noted inline)."""

    def __init__(
        self,
        *,
        policy: Policy,
        optimizer: ParallelOptimizer,
        planner: MigrationPlanner,
        instance: InstanceSpec,
        max_ondemand: int = 0,
        drain_s: float = 0.5,
        pool_instances: int | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"SpotController.policy must be one of {POLICIES}, got {policy!r}")
        if policy == "reroute" and (pool_instances is None or pool_instances <= 0):
            raise ValueError(
                "SpotController: the reroute policy fixes its configuration for the whole host pool; "
                f"pass pool_instances > 0 (e.g. the trace's peak instance count), got {pool_instances!r}"
            )
        self.policy = policy
        self.optimizer = optimizer
        self.planner = planner
        self.instance = instance
        self.max_ondemand = max_ondemand
        self.drain_s = drain_s  # SpotServe's baselines stop 0.5 s before the deadline
        self.config: ParallelConfig | None = None
        self.placement: dict[Device, Position] = {}
        self.pool_instances = pool_instances
        # reroute: the configuration chosen once for the pool (dp aside); None until the first
        # decision, or for good when the model fits nowhere in the pool
        self.fixed: ParallelConfig | None = None
        self._fixed_chosen = False
        self.ondemand: tuple[str, ...] = ()
        self._next_od = 0

    def devices(self, instances: list[str]) -> dict[str, list[Device]]:
        return {iid: [Device(iid, k) for k in range(self.instance.gpus_per_instance)] for iid in instances}

    def _ondemand_ids(self, k: int) -> tuple[str, ...]:
        while len(self.ondemand) < k:
            self.ondemand += (f"od{self._next_od}",)
            self._next_od += 1
        return self.ondemand[:k]

    def decide(self, view: ClusterView) -> Reconfiguration | None:
        """React to a change; None if the current deployment stays as it is."""
        spot = [i for i in view.instances if i not in view.dying and i not in self.ondemand]
        if self.policy == "reroute":
            return self._reroute(view, spot)
        choice = self.optimizer.choose_with_ondemand(len(spot), view.required_rate, max_ondemand=self.max_ondemand)
        self.ondemand = self._ondemand_ids(choice.num_ondemand)
        usable = spot + list(self.ondemand)
        cand = choice.candidate
        new = None if cand is None else cand.config
        if new == self.config and all(d.instance_id in usable for d in self.placement):
            return None
        if self.policy == "spotserve":
            return self._spotserve(view, usable, new)
        return self._restart(view, usable, new)

    # -- spotserve ---------------------------------------------------------------------------
    def _spotserve(self, view: ClusterView, usable: list[str], new: ParallelConfig | None) -> Reconfiguration:
        now, old_place = view.now_s, self.placement
        lost = frozenset(d.instance_id for d in old_place if d.instance_id not in view.instances)
        dying = frozenset(d.instance_id for d in old_place if d.instance_id in view.dying)
        deadline = min((view.dying[i] for i in dying), default=None)
        old_replicas = frozenset(p.replica for p in old_place.values())
        if new is None:
            return self._commit(
                view,
                None,
                {},
                old_replicas,
                deadline if deadline is not None else now,
                "recompute",
                {},
                {},
                None,
                blocks_until=now,
            )
        # Which old batches the new replicas inherit: replicas that keep all their GPUs first (they
        # can stay in place), then the most progress (the artifact keeps the largest start_step).
        leaving = lost | dying
        broken = {p.replica for d, p in old_place.items() if d.instance_id in leaving}
        ranked = sorted(
            (r for r, tok in view.inflight_tokens.items() if tok > 0),
            key=lambda r: (r in broken, -view.progress.get(r, 0), r),
        )[: new.dp]
        replica_map: dict[int, int | None] = {i: r for i, r in enumerate(sorted(ranked))}
        kv = {r: view.inflight_tokens[r] for r in ranked}
        placement = self._match(usable, new, kv, replica_map, lost)
        plan = self._plan(placement, new, kv, replica_map, dying, lost)
        stopping = old_replicas - set(plan.intact_replicas.values())
        mode: RecoveryMode = "migrate_kv"
        stop_by = now
        if stopping:
            choice = choose_recovery(
                now=now,
                deadline=deadline,
                est_with_kv_s=plan.est_s,
                est_params_s=plan.est_params_s,
                can_migrate_kv=bool(plan.kv_replicas & stopping),
            )
            mode, stop_by = choice.mode, choice.stop_by
            if mode != "migrate_kv" or not choice.use_dying_sources:
                # NOTE: same mapping (the KV still ties GPUs to their replica), but only the intact
                # replicas keep their KV, and in place; the stopping ones' batches are recomputed.
                gone = lost if choice.use_dying_sources else leaving
                kept_kv = {old_r: kv[old_r] for old_r in plan.intact_replicas.values() if old_r in kv}
                plan = self._plan(placement, new, kept_kv, replica_map, dying, gone)
                stopping = old_replicas - set(plan.intact_replicas.values())
        # A replica serves on if intact; one that inherits a stopped batch's KV waits for the whole
        # migration after the stop; any other waits only for its weights, from now if its GPUs are
        # free, else from the stop.
        busy = {d for d, p in old_place.items() if p.replica in stopping}
        resumes = plan.kv_replicas & stopping if mode == "migrate_kv" else frozenset()
        replica_map = {r: old_r for r, old_r in replica_map.items() if old_r not in plan.intact_replicas.values()}
        replica_map.update(plan.intact_replicas)
        gpus: dict[int, set[Device]] = {}
        for d, p in placement.items():
            gpus.setdefault(p.replica, set()).add(d)
        ready: dict[int, float] = {}
        for r in range(new.dp):
            if r in plan.intact_replicas or view.is_initial:
                ready[r] = now
            elif replica_map.get(r) in resumes:
                ready[r] = stop_by + plan.est_s
            else:
                ready[r] = (stop_by if gpus[r] & busy else now) + plan.est_params_s
        return self._commit(
            view,
            new,
            placement,
            frozenset(stopping),
            stop_by,
            mode,
            replica_map,
            ready,
            plan,
            blocks_until=max([stop_by, *ready.values()]),
        )

    def _match(self, usable, new, kv, replica_map, lost) -> dict[Device, Position]:
        old, old_place = self.config, self.placement
        devs = self.devices(usable)
        if old is None:
            return rank_order_placement(devs, new, self.instance.gpus_per_instance)

        def weight_fn(d: Device, pos: Position) -> float:
            return self.planner.reusable_bytes(old_place[d], old, pos, new, kv_tokens=kv, replica_map=replica_map)

        return match_devices(
            devs,
            new,
            self.instance.gpus_per_instance,
            weight_fn,
            has_state=lambda d: d in old_place and d.instance_id not in lost,
        )

    def _plan(self, placement, new, kv, replica_map, dying, lost) -> MigrationPlan:
        return self.planner.plan(
            old_config=self.config,
            old_placement=self.placement,
            new_config=new,
            new_placement=placement,
            kv_tokens=kv,
            replica_map=replica_map,
            dying_instances=dying,
            lost_instances=lost,
        )

    # -- reparallelize (and the initial deployment of ondemand) -------------------------------
    def _restart(self, view: ClusterView, usable: list[str], new: ParallelConfig | None) -> Reconfiguration:
        now = view.now_s
        deadline = min((view.dying[d.instance_id] for d in self.placement if d.instance_id in view.dying), default=None)
        stop_by = now if deadline is None else max(now, deadline - self.drain_s)
        old_replicas = frozenset(p.replica for p in self.placement.values())
        if new is None:
            return self._commit(view, None, {}, old_replicas, stop_by, "restart", {}, {}, None, blocks_until=stop_by)
        placement = rank_order_placement(self.devices(usable), new, self.instance.gpus_per_instance)
        plan = self.planner.plan(
            old_config=None, old_placement={}, new_config=new, new_placement=placement, kv_tokens={}, replica_map={}
        )
        ready_s = now if view.is_initial else stop_by + plan.est_s + self.instance.restart_overhead_s
        ready = {r: ready_s for r in range(new.dp)}
        return self._commit(
            view, new, placement, old_replicas, stop_by, "restart", {}, ready, plan, blocks_until=ready_s
        )

    # -- reroute -----------------------------------------------------------------------------
    def _reroute(self, view: ClusterView, spot: list[str]) -> Reconfiguration | None:
        now, g = view.now_s, self.instance.gpus_per_instance
        if not self._fixed_chosen:
            # NOTE: the artifact's rerouting baseline (`baseline-triton`) solves once, before the
            # trace starts, for every GPU of the host pool (`Scheduler.inspect_init_strategy`,
            # Hsword/SpotServe@832b29f elastic-switch/scheduler/scheduler.py:631-637, with
            # `TraceReplayer.get_available_hosts()` = all `--nnodes` hosts of the hostfile,
            # trace_replayer.py:84-85,127-129; aws_e2e.sh:50,105 passes 10 hosts of 4 GPUs), keeps tp, pp,
            # batch, M1 and M2, and at every event only sets dp = alive GPUs // (tp*pp)
            # (scheduler.py:734-736). Choosing from the first cluster instead would tie the
            # baseline to whatever happens to be alive at t=0.
            self._fixed_chosen = True
            cand = self.optimizer.choose(self.pool_instances * g, view.required_rate)
            self.fixed = None if cand is None else cand.config
        if self.fixed is None:
            return None  # the model fits nowhere in the pool: this baseline never serves
        tp, pp = self.fixed.shape
        old_place = self.placement
        by_replica: dict[int, list[Device]] = {}
        for d, p in old_place.items():
            by_replica.setdefault(p.replica, []).append(d)
        broken = {r for r, devs in by_replica.items() if any(d.instance_id not in spot for d in devs)}
        deadline = min(
            (view.dying[d.instance_id] for r in broken for d in by_replica[r] if d.instance_id in view.dying),
            default=None,
        )
        stop_by = now if deadline is None else max(now, deadline - self.drain_s)
        kept = sorted(r for r in by_replica if r not in broken)
        used = {d for r in kept for d in by_replica[r]}
        free = {i: [d for d in devs if d not in used] for i, devs in self.devices(spot).items()}
        slots_free = sum(len(v) // min(tp, g) for v in free.values())
        num_new = slots_free // (tp * pp // min(tp, g))
        if not broken and num_new == 0:
            return None
        dp = len(kept) + num_new
        new = replace(self.fixed, dp=dp) if dp else None
        placement: dict[Device, Position] = {}
        replica_map: dict[int, int | None] = {}
        for i, r in enumerate(kept):
            replica_map[i] = r
            placement.update({d: old_place[d]._replace(replica=i) for d in by_replica[r]})
        plan = None
        ready = {i: now for i in range(len(kept))}
        if num_new and new is not None:
            extra = ParallelConfig(dp=num_new, tp=tp, pp=pp, batch_size=new.batch_size)
            added = rank_order_placement(free, extra, g)
            placement.update({d: p._replace(replica=p.replica + len(kept)) for d, p in added.items()})
            plan = self.planner.plan(
                old_config=None, old_placement={}, new_config=extra, new_placement=added, kv_tokens={}, replica_map={}
            )
            reuses_stopping = any(d.instance_id in spot and d in old_place for d in added)
            start = stop_by if reuses_stopping else now
            ready.update(
                {
                    len(kept) + k: (now if view.is_initial else start + plan.est_s + self.instance.restart_overhead_s)
                    for k in range(num_new)
                }
            )
        return self._commit(
            view,
            new if placement else None,
            placement,
            frozenset(broken),
            stop_by,
            "restart",
            replica_map,
            ready,
            plan,
            blocks_until=stop_by,
        )

    def _commit(self, view, new, placement, stop, stop_by, mode, replica_map, ready, plan, *, blocks_until):
        self.config, self.placement = new, dict(placement)
        return Reconfiguration(
            time_s=view.now_s,
            policy=self.policy,
            new_config=new,
            placement=dict(placement),
            stop_replicas=stop,
            stop_by=stop_by,
            mode=mode,
            replica_map=dict(replica_map),
            ready_at=dict(ready),
            migration=plan,
            ondemand_instances=tuple(self.ondemand),
            blocks_until=blocks_until,
        )
