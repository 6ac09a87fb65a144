"""Parallelization controller: pick `(dp, tp, pp, batch, M1, M2)` for the GPUs at hand.

Rule (SpotServe `StrategyOptimizer.solve`): among the configurations that fit in memory, put an
even share of the (padded) layers on each stage and reach `throughput >= required rate`, take the
one with the least batch latency; if none reaches the rate, take the one with the most
throughput. Ties go to fewer GPUs, then to higher throughput.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from ember.spot.config import ParallelConfig
from ember.spot.hardware import InstanceSpec, ModelMemory
from ember.spot.profile import LatencyProfile


class Candidate(NamedTuple):
    config: ParallelConfig
    latency_s: float  # one full batch (prefill + output_len steps)
    throughput: float  # requests per second of the whole deployment


class Choice(NamedTuple):
    candidate: Candidate | None
    num_ondemand: int  # on-demand instances to add on top of the spot ones


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """What the optimizer is asked to respect."""

    output_len: int = 128
    input_len: int = 512
    max_batch_size: int = 4
    # SpotServe's artifact: 4 (6.7B), 12 (20B), 16 (30B); 1 lets the memory model decide alone.
    min_world_size: int = 1

    def __post_init__(self) -> None:
        for name in ("output_len", "input_len", "max_batch_size", "min_world_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"OptimizerConfig.{name} must be positive, got {getattr(self, name)}")


class ParallelOptimizer:
    """Chooses configurations from a latency profile, a memory model and an instance type."""

    def __init__(
        self, profile: LatencyProfile, memory: ModelMemory, instance: InstanceSpec, config: OptimizerConfig
    ) -> None:
        self.profile = profile
        self.memory = memory
        self.instance = instance
        self.config = config
        self._candidates = lru_cache(maxsize=None)(self._enumerate)

    def fits_memory(self, tp: int, pp: int, batch_size: int) -> bool:
        tokens = batch_size * (self.config.input_len + self.config.output_len)
        need = self.memory.weight_bytes_per_gpu(tp, pp) + self.memory.kv_bytes_per_gpu(tp, pp, tokens)
        return need <= self.instance.usable_gpu_bytes

    def is_shape_allowed(self, tp: int, pp: int) -> bool:
        g = self.instance.gpus_per_instance
        # NOTE: a tp group larger than an instance must be whole instances (no ragged groups).
        if tp > g and tp % g:
            return False
        return (
            tp * pp >= self.config.min_world_size
            and self.profile.num_padded_layers % pp == 0
            and pp <= self.memory.num_layers
        )

    def latency(self, config: ParallelConfig) -> float:
        lat = self.profile.batch_latency(
            tp=config.tp,
            pp=config.pp,
            batch_size=config.batch_size,
            prefill_micro=config.prefill_micro,
            decode_micro=config.decode_micro,
        )
        return lat.duration_s(self.config.output_len)

    def _enumerate(self, num_gpus: int) -> tuple[Candidate, ...]:
        out = []
        batches = [b for b in self.profile.batch_sizes if b <= self.config.max_batch_size]
        for tp in self.profile.tp_degrees:
            for pp in range(1, num_gpus // tp + 1):
                if not self.is_shape_allowed(tp, pp):
                    continue
                dp = num_gpus // (tp * pp)
                for bsz in batches:
                    if not self.fits_memory(tp, pp, bsz):
                        continue
                    for m1 in (m for m in batches if m <= bsz):
                        for m2 in (m for m in batches if m <= bsz):
                            if not (self.profile.has(tp, bsz // m1) and self.profile.has(tp, bsz // m2)):
                                continue
                            cfg = ParallelConfig(dp=dp, tp=tp, pp=pp, batch_size=bsz, prefill_micro=m1, decode_micro=m2)
                            lat = self.latency(cfg)
                            out.append(Candidate(cfg, lat, dp * bsz / lat))
        return tuple(out)

    def candidates(self, num_gpus: int, *, shape: tuple[int, int] | None = None) -> tuple[Candidate, ...]:
        """Every feasible configuration on `num_gpus` GPUs (dp as large as they allow)."""
        cands = self._candidates(num_gpus) if num_gpus > 0 else ()
        if shape is not None:
            cands = tuple(c for c in cands if c.config.shape == shape)
        return cands

    def choose(self, num_gpus: int, required_rate: float, *, shape: tuple[int, int] | None = None) -> Candidate | None:
        """The configuration for `num_gpus` GPUs at `required_rate` req/s; None if nothing fits.
        `shape=(tp, pp)` fixes the shape (the rerouting baseline)."""
        cands = self.candidates(num_gpus, shape=shape)
        if not cands:
            return None
        meeting = [c for c in cands if c.throughput >= required_rate]
        if meeting:
            return min(meeting, key=lambda c: (round(c.latency_s, 9), c.config.num_gpus, -c.throughput))
        return max(cands, key=lambda c: (round(c.throughput, 9), -c.latency_s, -c.config.num_gpus))

    def choose_with_ondemand(
        self,
        num_spot_instances: int,
        required_rate: float,
        *,
        max_ondemand: int = 0,
        shape: tuple[int, int] | None = None,
    ) -> Choice:
        """Add the fewest on-demand instances (up to `max_ondemand`) that reach `required_rate`;
        if no count reaches it, the count with the most throughput (fewest on ties)."""
        g = self.instance.gpus_per_instance
        best: Choice | None = None
        for k in range(max_ondemand + 1):
            cand = self.choose((num_spot_instances + k) * g, required_rate, shape=shape)
            if cand is None:
                continue
            if cand.throughput >= required_rate:
                return Choice(cand, k)
            if best is None or best.candidate is None or cand.throughput > best.candidate.throughput * (1 + 1e-9):
                best = Choice(cand, k)
        return best if best is not None else Choice(None, 0)

    def min_instances_for(self, required_rate: float, *, limit: int = 256) -> int:
        """Fewest instances whose best configuration reaches `required_rate` (sizing on-demand)."""
        g = self.instance.gpus_per_instance
        first_feasible = None
        for n in range(1, limit + 1):
            cand = self.choose(n * g, required_rate)
            if cand is None:
                continue
            first_feasible = first_feasible or n
            if cand.throughput >= required_rate:
                return n
        if first_feasible is None:
            raise ValueError("no instance count up to the limit fits the model in memory")
        return max(first_feasible, math.ceil(self.config.min_world_size / g))
