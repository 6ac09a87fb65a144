"""One side-by-side experiment: build the optimizer, planner and controller for each policy from
the same inputs, simulate, summarize. The CLI and the tests both go through `run_experiment`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ember.errors import InvalidInputError
from ember.spot.arrivals import Arrival, mean_rate
from ember.spot.controller import POLICIES, Policy, SpotController
from ember.spot.hardware import InstanceSpec, ModelMemory
from ember.spot.migration import MigrationPlanner
from ember.spot.optimizer import OptimizerConfig, ParallelOptimizer
from ember.spot.profile import LatencyProfile
from ember.spot.results import RunRecord, Summary, summarize
from ember.spot.simulator import SimulationConfig, Simulator
from ember.spot.traces import AvailabilityTrace


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """Everything but the data: policies to run and the knobs they share."""

    policies: tuple[Policy, ...] = POLICIES
    grace_period_s: float = 30.0
    output_len: int = 128
    max_batch_size: int = 4
    min_world_size: int = 1
    required_rate: float | None = None  # None: the measured arrival rate
    max_ondemand: int = 0  # spotserve/reparallelize may add up to this many on-demand instances
    ondemand_instances: int | None = None  # ondemand policy fleet; None: fewest that reach the rate
    vocab_size: int = 50304
    bytes_per_value: int = 2  # weights and KV: 2 = fp16 (Ember), 4 = fp32 (the SpotServe artifact)
    # instances the reroute baseline sizes its fixed configuration for (the artifact's hostfile);
    # None: the trace's peak instance count
    host_pool: int | None = None
    instance: InstanceSpec = field(default_factory=InstanceSpec)

    def __post_init__(self) -> None:
        for p in self.policies:
            if p not in POLICIES:
                raise InvalidInputError(
                    f"unknown policy {p!r}; choose from {', '.join(POLICIES)} or all", param="policy"
                )
        if not self.policies:
            raise InvalidInputError("no policy given", param="policy")
        if self.max_ondemand < 0:
            raise InvalidInputError(f"max_ondemand must be >= 0, got {self.max_ondemand}", param="max_ondemand")
        if self.bytes_per_value <= 0:
            raise InvalidInputError(
                f"bytes_per_value must be positive, got {self.bytes_per_value}", param="bytes_per_value"
            )
        if self.host_pool is not None and self.host_pool <= 0:
            raise InvalidInputError(f"host_pool must be positive, got {self.host_pool}", param="host_pool")
        if self.ondemand_instances is not None and self.ondemand_instances <= 0:
            raise InvalidInputError(
                f"ondemand_instances must be positive, got {self.ondemand_instances}", param="ondemand_instances"
            )


@dataclass(frozen=True, kw_only=True)
class PolicyResult:
    summary: Summary
    record: RunRecord
    wall_s: float


def run_experiment(
    *, trace: AvailabilityTrace, arrivals: list[Arrival], profile: LatencyProfile, config: ExperimentConfig
) -> list[PolicyResult]:
    """Simulate every policy of `config` on the same trace and arrivals."""
    if not arrivals:
        raise InvalidInputError("no request arrivals to replay", param="arrivals")
    inst = config.instance
    memory = ModelMemory(
        num_layers=profile.num_layers,
        hidden_size=profile.hidden_size,
        vocab_size=config.vocab_size,
        bytes_per_value=config.bytes_per_value,
    )
    opt_cfg = OptimizerConfig(
        output_len=config.output_len,
        input_len=arrivals[0].prompt_len,
        max_batch_size=config.max_batch_size,
        min_world_size=config.min_world_size,
    )
    optimizer = ParallelOptimizer(profile, memory, inst, opt_cfg)
    rate = config.required_rate if config.required_rate is not None else mean_rate(arrivals)
    pool = config.host_pool if config.host_pool is not None else trace.max_instances
    if "reroute" in config.policies and pool <= 0:
        raise InvalidInputError("reroute: the trace never holds an instance; give host_pool", param="host_pool")
    out = []
    for policy in config.policies:
        fleet = 0
        if policy == "ondemand":
            try:
                fleet = config.ondemand_instances or optimizer.min_instances_for(rate)
            except ValueError as exc:
                raise InvalidInputError(f"ondemand: {exc}", param="profile") from None
        controller = SpotController(
            policy=policy,
            optimizer=optimizer,
            planner=MigrationPlanner(memory, inst),
            instance=inst,
            max_ondemand=config.max_ondemand if policy != "ondemand" else 0,
            pool_instances=pool if policy == "reroute" else None,
        )
        sim_cfg = SimulationConfig(
            grace_period_s=config.grace_period_s,
            output_len=config.output_len,
            max_batch_size=config.max_batch_size,
            required_rate=rate,
            ondemand_fleet=fleet,
        )
        start = time.perf_counter()
        record = Simulator(trace=trace, arrivals=arrivals, controller=controller, profile=profile, config=sim_cfg).run()
        wall = time.perf_counter() - start
        summary = summarize(
            record, spot_price_per_hour=inst.spot_price_per_hour, ondemand_price_per_hour=inst.ondemand_price_per_hour
        )
        out.append(PolicyResult(summary=summary, record=record, wall_s=wall))
    return out
