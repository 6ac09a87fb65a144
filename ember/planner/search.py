"""Galvatron's search: a decision tree prunes the strategy space, dynamic programming over
layers picks one strategy per layer under a per-device memory budget, and an outer loop
over pipeline degrees, stage splits, batch sizes and micro-batch counts picks the plan with
the highest predicted throughput.

Per stage (devices fixed, memory budget ``E`` in units) the layer DP is::

    f_1[e][s] = c[s] + R[tp1][s]                        if m[s] <= e
    f_i[e][s] = c[s] + min_s' f_{i-1}[e - m[s]][s'] + R[s'][s]
    best(n)   = min_s f_n[E][s] + R[s][tp1]             # stage of n layers, ends in tp1

(``c`` = time per micro-batch, ``m`` = memory, ``R`` = layout transition). Transients (a
ZeRO-3 layer's unsharded parameters, a checkpointed layer's recomputation) enter the peak
as a max, not a sum, so the DP runs once per cap ``T`` on the largest transient, with the
strategies above the cap removed and ``E`` reduced by ``T``. Stage splits then minimize
``sum_k c_k + (M - 1) max_k c_k`` exactly by enumerating the max (as Alpa's stage DP does).

Pruning, all exact under the cost model: TP degrees that do not divide the stage or exceed
a node; ZeRO types without data parallelism; GPipe when 1F1B is allowed (same time, more
memory); and, per stage, strategies dominated by another of the same TP degree (no slower,
no larger, no larger transient: transitions depend on the TP degree only).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ember.planner.cost_model import CostModel, PlanCost, in_flight
from ember.planner.strategy import (
    DP_TYPES,
    SCHEDULES,
    LayerStrategy,
    Plan,
    is_power_of_two,
)

INF = math.inf
PURE_FAMILIES = ("dp", "zero3", "tp", "pp")


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """The plans to consider. ``None`` = every value the device count allows."""

    num_devices: int
    memory_budget_bytes: float  # per device
    global_batch_sizes: tuple[int, ...]
    micro_batch_counts: tuple[int, ...] | None = None  # None = powers of two
    pp_degrees: tuple[int, ...] | None = None  # None = powers of two up to num_layers
    tp_degrees: tuple[int, ...] | None = None  # None = those the model profile measured
    dp_types: tuple[str, ...] = ("ddp", "zero3")
    checkpoint: tuple[bool, ...] = (False, True)
    schedules: tuple[str, ...] = ("1f1b",)
    memory_unit_bytes: float | None = None  # DP resolution; None = budget / 1024

    def __post_init__(self):
        if not is_power_of_two(self.num_devices):
            raise ValueError(f"num_devices={self.num_devices} must be a power of two")
        if not self.memory_budget_bytes > 0:
            raise ValueError(f"memory_budget_bytes={self.memory_budget_bytes} must be positive")
        if not self.global_batch_sizes or any(
            isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in self.global_batch_sizes
        ):
            raise ValueError(f"global_batch_sizes={self.global_batch_sizes} must be positive integers")
        for name, allowed in (("dp_types", DP_TYPES), ("schedules", SCHEDULES)):
            values = getattr(self, name)
            if not values or any(v not in allowed for v in values):
                raise ValueError(f"{name}={values} must be a non-empty subset of {allowed}")
        if self.memory_unit_bytes is not None and not self.memory_unit_bytes > 0:
            raise ValueError(f"memory_unit_bytes={self.memory_unit_bytes} must be positive")

    @property
    def memory_unit(self) -> float:
        return self.memory_unit_bytes or self.memory_budget_bytes / 1024


class SearchResult(NamedTuple):
    plan: Plan | None  # None: nothing fits the memory budget
    cost: PlanCost | None
    num_configs: int  # (pp, batch, micro-batches, schedule) combinations searched in full
    seconds: float


def candidate_strategies(
    space: SearchSpace, *, devices_per_stage: int, tp_degrees: tuple[int, ...], node_size: int
) -> list[LayerStrategy]:
    """The decision tree below one pipeline degree: tp -> data-parallel type -> checkpoint."""
    out = []
    for tp in sorted(tp_degrees):
        if devices_per_stage % tp or tp > node_size:
            continue
        dp = devices_per_stage // tp
        for dp_type in space.dp_types if dp > 1 else ("ddp",):
            for ckpt in space.checkpoint:
                out.append(LayerStrategy(tp=tp, dp_type=dp_type, checkpoint=ckpt))
    return sorted(set(out))


def search(
    cost_model: CostModel,
    space: SearchSpace,
    *,
    strategies: list[LayerStrategy] | None = None,
    pp_degrees: tuple[int, ...] | None = None,
) -> SearchResult:
    """The plan with the highest predicted throughput that fits the budget on every device.

    ``strategies``/``pp_degrees`` restrict the space (pure-strategy baselines use them)."""
    start = time.perf_counter()
    model = cost_model.model
    num_layers = model.num_layers
    tps = space.tp_degrees or model.layer.tp_degrees
    pps = pp_degrees or space.pp_degrees or _powers_of_two(min(space.num_devices, num_layers))
    configs = []  # (lower bound per sample, pp, gbs, m, schedule, candidates)
    for pp in sorted(set(pps)):
        if space.num_devices % pp or pp > num_layers:
            continue
        n = space.num_devices // pp
        cands = strategies
        if cands is None:
            cands = candidate_strategies(
                space, devices_per_stage=n, tp_degrees=tps, node_size=cost_model.hw.devices_per_node
            )
        cands = [s for s in cands if n % s.tp == 0 and s.tp in model.layer.forward_s]
        if not cands:
            continue
        for gbs in space.global_batch_sizes:
            counts = space.micro_batch_counts or _powers_of_two(max(gbs // n, 1))
            for m, schedule in itertools.product(counts, _schedules(space, pp)):
                if gbs % (m * n):
                    continue
                ctx = _Config(cost_model, space, cands, pp=pp, gbs=gbs, m=m, schedule=schedule)
                bound = ctx.lower_bound()
                if math.isfinite(bound):
                    configs.append((bound / gbs, len(configs), ctx))
    # NOTE: branch and bound: the memory-free optimum bounds each configuration from below;
    # visiting the most promising first lets most of them be skipped without the memory DP.
    best: tuple[float, Plan] | None = None
    num_configs = 0
    for bound, _, ctx in sorted(configs):
        if best is not None and bound >= best[0] * (1 - 1e-12):
            break
        num_configs += 1
        found = ctx.solve()
        if found is None:
            continue
        time_s, plan = found
        per_sample = time_s / plan.global_batch_size
        if best is None or per_sample < best[0] - 1e-15:
            best = (per_sample, plan)
    seconds = time.perf_counter() - start
    if best is None:
        return SearchResult(None, None, num_configs, seconds)
    return SearchResult(best[1], cost_model.evaluate(best[1]), num_configs, seconds)


def search_pure(cost_model: CostModel, space: SearchSpace) -> dict[str, SearchResult]:
    """The best plan of each pure strategy (every layer alike; checkpointing on or off,
    batch and micro-batches free): DP, ZeRO-3, TP over all devices, PP over all devices."""
    n = space.num_devices
    families = {
        "dp": (1, [LayerStrategy(tp=1, dp_type="ddp", checkpoint=c) for c in (False, True)]),
        "zero3": (1, [LayerStrategy(tp=1, dp_type="zero3", checkpoint=c) for c in (False, True)]),
        "tp": (1, [LayerStrategy(tp=n, dp_type="ddp", checkpoint=c) for c in (False, True)]),
        "pp": (n, [LayerStrategy(tp=1, dp_type="ddp", checkpoint=c) for c in (False, True)]),
    }
    out = {}
    for name, (pp, strategies) in families.items():
        results = [search(cost_model, space, strategies=[s], pp_degrees=(pp,)) for s in strategies]
        found = [r for r in results if r.plan is not None]
        configs = sum(r.num_configs for r in results)
        seconds = sum(r.seconds for r in results)
        if not found:
            out[name] = SearchResult(None, None, configs, seconds)
        else:
            top = max(found, key=lambda r: r.cost.samples_per_s)
            out[name] = SearchResult(top.plan, top.cost, configs, seconds)
    return out


# ---- one (pp, batch, micro-batches, schedule) configuration
class _Config:
    def __init__(self, cost_model, space, cands, *, pp, gbs, m, schedule):
        self.space, self.cands = space, cands
        self.pp, self.gbs, self.m, self.schedule = pp, gbs, m, schedule
        self.num_layers = cost_model.model.num_layers
        n = space.num_devices // pp
        samples_per_rank = gbs / m / n
        kw = dict(num_devices=space.num_devices, micro_batch_size=gbs // m, num_micro_batches=m)
        self.costs = [cost_model.layer_cost(s, devices_per_stage=n, **kw) for s in cands]
        self.time_s = np.array([c.micro_s + c.step_s for c in self.costs])
        self.tps = [s.tp for s in cands]

        def move(a: int, b: int) -> float:
            return cost_model.transition_s(a, b, samples_per_rank=samples_per_rank)

        self.trans = np.array([[move(a, b) for b in self.tps] for a in self.tps])
        self.enter = np.array([move(1, b) for b in self.tps])
        self.leave = np.array([move(a, 1) for a in self.tps])
        self.fixed = [cost_model.stage_fixed(stage=k, pp=pp, schedule=schedule, **kw) for k in range(pp)]
        self.max_len = self.num_layers - pp + 1
        self.sync_s = cost_model.step_sync_s(space.num_devices)

    def lower_bound(self) -> float:
        """The best time ignoring memory (every stage may use every strategy)."""
        row = _free_table(self.time_s, self.trans, self.enter, self.leave, self.max_len)
        rows = np.array([row + f.micro_s for f in self.fixed])
        split = _best_split(rows, self.num_layers, self.m)
        return INF if split is None else split[0] + self.sync_s

    def solve(self):
        """(time, plan) of the best plan of this configuration that fits, or None."""
        space, pp, m = self.space, self.pp, self.m
        tables: dict[tuple, tuple[np.ndarray, list]] = {}
        stage_rows, stage_choices = [], []
        for k in range(pp):
            flight = in_flight(self.schedule, stage=k, pp=pp, num_micro_batches=m)
            key = (k == 0, k == pp - 1, flight)
            if key not in tables:
                mem = np.array([c.state_bytes + c.activation_bytes * flight for c in self.costs])
                transient = np.array([c.transient_bytes for c in self.costs])
                budget = space.memory_budget_bytes - self.fixed[k].memory_bytes
                tables[key] = _stage_table(
                    self.time_s,
                    mem,
                    transient,
                    self.tps,
                    self.trans,
                    self.enter,
                    self.leave,
                    budget=budget,
                    unit=space.memory_unit,
                    max_len=self.max_len,
                )
            row, choices = tables[key]
            stage_rows.append(row + self.fixed[k].micro_s)
            stage_choices.append(choices)
        split = _best_split(np.array(stage_rows), self.num_layers, m)
        if split is None:
            return None
        time_s, counts = split
        time_s += self.sync_s
        layers = []
        for k, count in enumerate(counts):
            layers.extend(self.cands[i] for i in stage_choices[k][count])
        plan = Plan(
            num_devices=space.num_devices,
            pp=pp,
            stage_layers=tuple(counts),
            layers=tuple(layers),
            global_batch_size=self.gbs,
            num_micro_batches=m,
            schedule=self.schedule,
        )
        return time_s, plan


def _free_table(time_s, trans, enter, leave, max_len):
    """Best stage time for 1..max_len layers without a memory limit."""
    best = np.full(max_len + 1, INF)
    f = time_s + enter
    for length in range(1, max_len + 1):
        if length > 1:
            f = (f[:, None] + trans).min(axis=0) + time_s
        best[length] = (f + leave).min()
    return best


def _stage_table(time_s, mem, transient, tps, trans, enter, leave, *, budget, unit, max_len):
    """Best time of a stage with 1..max_len layers (index 0 unused, inf = infeasible) and the
    strategy indices that reach it, over all transient caps (one batched DP)."""
    best = np.full(max_len + 1, INF)
    choices: list = [None] * (max_len + 1)
    # NOTE: a strategy dominated by one of the same TP degree (no slower, no larger, no
    # larger transient) is dominated under every cap that allows it: drop it once.
    keep = _undominated(np.arange(len(time_s)), time_s, mem, transient, tps)
    keep = keep[np.argsort([tps[i] for i in keep], kind="stable")]
    caps = np.array(sorted(set(transient[keep].tolist())))
    units = np.floor((budget - caps) / unit + 1e-9).astype(np.int64)
    caps, units = caps[units >= 0], units[units >= 0]
    if caps.size == 0:
        return best, choices
    c, tr = time_s[keep], transient[keep]
    need = np.ceil(mem[keep] / unit - 1e-9).astype(np.int64)
    top = int(min(units.max(), need.max() * max_len))  # more memory than this never binds
    ends_at = np.minimum(units, top)
    allowed = tr[None, :] <= caps[:, None]  # [cap, s]
    tp_of = np.array([tps[i] for i in keep])
    groups, group_of = np.unique(tp_of, return_inverse=True)
    starts = np.searchsorted(tp_of, groups)
    tp_trans = trans[np.ix_(keep, keep)][starts][:, starts]  # [t', t]
    enter_k, leave_k = enter[keep], leave[keep]
    num_caps, num = len(caps), len(keep)
    f = np.full((num_caps, top + 1, num), INF)
    for s in range(num):
        if need[s] <= top:
            f[:, need[s] :, s] = np.where(allowed[:, s], c[s] + enter_k[s], INF)[:, None]
    history = [f]
    rows = np.arange(num_caps)
    for length in range(1, max_len + 1):
        if length > 1:
            g = np.minimum.reduceat(f, starts, axis=2)  # [cap, e, t']: best ending in tp t'
            h = (g[..., :, None] + tp_trans[None, None]).min(axis=2)[..., group_of]
            f = np.full_like(f, INF)
            for s in range(num):
                if need[s] <= top:
                    f[:, need[s] :, s] = h[:, : top + 1 - need[s], s] + c[s]
            f[~np.broadcast_to(allowed[:, None, :], f.shape)] = INF
            history.append(f)
        ends = f[rows, ends_at, :] + leave_k[None, :]  # [cap, s]
        cap, s = np.unravel_index(int(np.argmin(ends)), ends.shape)
        if not np.isfinite(ends[cap, s]):
            continue
        best[length] = ends[cap, s]
        seq, e = [int(s)], int(ends_at[cap])
        for prev in reversed(history[: length - 1]):
            e -= need[s]
            s = int(np.argmin(prev[cap, e, :] + tp_trans[:, group_of[s]][group_of]))
            seq.append(s)
        choices[length] = [int(keep[i]) for i in seq[::-1]]
    return best, choices


def _undominated(idx, time_s, mem, transient, tps):
    out = []
    for i in idx:
        dominated = False
        for j in idx:
            if j == i or tps[j] != tps[i]:
                continue
            no_worse = time_s[j] <= time_s[i] and mem[j] <= mem[i] and transient[j] <= transient[i]
            better = (time_s[j], mem[j], transient[j]) != (time_s[i], mem[i], transient[i])
            if no_worse and (better or j < i):
                dominated = True
                break
        if not dominated:
            out.append(i)
    return np.array(out, dtype=np.int64)


def _best_split(rows: np.ndarray, num_layers: int, m: int):
    """Minimize ``sum_k rows[k][n_k] + (m - 1) max_k rows[k][n_k]`` over ``sum n_k = L``,
    ``n_k >= 1``, by enumerating the max. Returns (time, counts) or None."""
    finite = rows[np.isfinite(rows)]
    if finite.size == 0:
        return None
    best = None
    uncapped = _capped_sum(rows, num_layers, INF)
    if uncapped is None:
        return None
    for cap in np.unique(finite):
        if best is not None and uncapped[0] + (m - 1) * cap >= best[0]:
            break  # the sum can only grow and so can the max term
        found = _capped_sum(rows, num_layers, cap)
        if found is None:
            continue
        total = found[0] + (m - 1) * max(rows[k][n] for k, n in enumerate(found[1]))
        if best is None or total < best[0] - 1e-15:
            best = (total, found[1])
    return best


def _capped_sum(rows, num_layers, cap):
    pp, width = rows.shape  # stages, longest stage + 1
    masked = np.where(rows <= cap, rows, INF)
    masked[:, 0] = INF
    acc = np.full(num_layers + 1, INF)
    acc[0] = 0.0
    back = []
    for k in range(pp):
        # new[j] = min_n acc[j - n] + masked[k][n]
        j = np.arange(num_layers + 1)[:, None]
        n = np.arange(width)[None, :]
        prev = np.where(j - n >= 0, acc[np.clip(j - n, 0, None)], INF)
        total = prev + masked[k][None, :]
        arg = total.argmin(axis=1)
        acc = total[np.arange(num_layers + 1), arg]
        back.append(arg)
    if not np.isfinite(acc[num_layers]):
        return None
    counts, j = [], num_layers
    for k in reversed(range(pp)):
        n = int(back[k][j])
        counts.append(n)
        j -= n
    return float(acc[num_layers]), counts[::-1]


def _schedules(space: SearchSpace, pp: int) -> tuple[str, ...]:
    # NOTE: under the cost model GPipe takes 1F1B's time with at least its memory, and
    # without pipelining both are plain gradient accumulation: keep one where both are given.
    if "1f1b" in space.schedules and (pp == 1 or "gpipe" in space.schedules):
        return ("1f1b",)
    return space.schedules


def _powers_of_two(limit: int) -> tuple[int, ...]:
    out, p = [], 1
    while p <= limit:
        out.append(p)
        p *= 2
    return tuple(out)
