"""Stateful inference recovery: how far an interrupted batch may decode before migration must
start, what it has committed, and how it resumes.

A batch started at `t0` with `c0` tokens already committed runs `fixed + prefill` (no prefill if
it resumes on migrated KV) and then one decode step per token:

    token i (1-based, i <= output_len - c0) is committed at  t0 + fixed + prefill + i * step

On a preemption notice with deadline `D` and a migration estimate `est`, the batch may decode
until `D - est` (SpotServe: "just-in-time arrangement"); one step is held back as a margin. What
it has committed then survives: with its KV migrated it resumes at the next token; without KV it
re-runs the prefill over prompt + committed tokens (recompute); only a restart loses tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

from ember.spot.profile import BatchLatency

RecoveryMode = Literal["migrate_kv", "recompute", "restart"]


@dataclass(frozen=True, kw_only=True)
class BatchProgress:
    """The timeline of one running batch (all its requests advance together)."""

    start_s: float
    committed_at_start: int
    output_len: int
    latency: BatchLatency
    with_prefill: bool = True
    prefill_scale: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.committed_at_start < self.output_len:
            raise ValueError(
                f"BatchProgress.committed_at_start must be in [0, {self.output_len}), got {self.committed_at_start}"
            )

    @property
    def first_token_s(self) -> float:
        """When decode steps begin (after the fixed cost and the prefill)."""
        prefill = self.latency.prefill_s * self.prefill_scale if self.with_prefill else 0.0
        return self.start_s + self.latency.fixed_s + prefill

    @property
    def num_steps(self) -> int:
        return self.output_len - self.committed_at_start

    @property
    def finish_s(self) -> float:
        return self.first_token_s + self.num_steps * self.latency.step_s

    def steps_done(self, now: float) -> int:
        if now < self.first_token_s:
            return 0
        return min(self.num_steps, int(math.floor((now - self.first_token_s) / self.latency.step_s + 1e-9)))

    def committed(self, now: float) -> int:
        return self.committed_at_start + self.steps_done(now)


class StopDecision(NamedTuple):
    finishes: bool  # completes normally before the stop point
    stop_s: float  # when it stops (or finishes)
    committed: int  # tokens committed at stop_s
    extra_steps: int  # decode steps run after the notice


def plan_stop(batch: BatchProgress, *, now: float, stop_by: float, margin_steps: int = 1) -> StopDecision:
    """How many more steps `batch` runs before `stop_by` (SpotServe's engine-side
    `steps = floor((slot - t1) / t2) - 1` on a removal)."""
    if batch.finish_s <= stop_by:
        return StopDecision(True, batch.finish_s, batch.output_len, batch.num_steps - batch.steps_done(now))
    done_now = batch.steps_done(now)
    steps = max(done_now, batch.steps_done(stop_by) - margin_steps)
    if steps == done_now:
        return StopDecision(False, now, batch.committed_at_start + steps, 0)
    return StopDecision(
        False, batch.first_token_s + steps * batch.latency.step_s, batch.committed_at_start + steps, steps - done_now
    )


class RecoveryChoice(NamedTuple):
    mode: RecoveryMode
    stop_by: float  # running batches must have stopped by then
    use_dying_sources: bool  # whether the plan may read from GPUs that are about to go


def choose_recovery(
    *, now: float, deadline: float | None, est_with_kv_s: float, est_params_s: float, can_migrate_kv: bool = True
) -> RecoveryChoice:
    """Pick the cheapest recovery that finishes migrating before `deadline` (None: no deadline,
    e.g. instances were added; stop at the next token and migrate everything)."""
    if deadline is None:
        return RecoveryChoice("migrate_kv" if can_migrate_kv else "recompute", now, True)
    if can_migrate_kv and now + est_with_kv_s <= deadline:
        return RecoveryChoice("migrate_kv", deadline - est_with_kv_s, True)
    if now + est_params_s <= deadline:
        return RecoveryChoice("recompute", deadline - est_params_s, True)
    # NOTE: not even the weights can leave the dying GPUs in time: stop now, reload what is lost.
    return RecoveryChoice("recompute", now, False)
