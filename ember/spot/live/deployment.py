"""Wiring of a live SpotServe deployment: the controller for the served model and the machine,
and the pieces (cluster, router, executor) built together.

The controller's optimizer needs a per-layer latency profile and a memory model of the served
model on the instance type. Live on CPU they come from the model itself: the profile from the
engine's step-latency model (``ember.runner.latency``), the memory model from its config, and
an ``InstanceSpec`` whose "device" memory decides how many devices a replica needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ember.kvcache.cost_model import LatencyModel
from ember.models.config import ModelArchConfig
from ember.spot.controller import Policy, SpotController
from ember.spot.hardware import InstanceSpec, ModelMemory
from ember.spot.migration import MigrationPlanner
from ember.spot.optimizer import OptimizerConfig, ParallelOptimizer
from ember.spot.profile import LatencyProfile


@dataclass(frozen=True, kw_only=True)
class LiveDeploymentConfig:
    policy: Policy = "spotserve"
    input_len: int = 32  # typical prompt, for the optimizer's batch latency
    output_len: int = 64
    max_batch_size: int = 8
    device_memory_mib: float = 1024.0  # per device (one device per instance here)
    network_gbps: float = 8.0
    storage_gbps: float = 8.0
    checkpoint_every: int = 8
    required_rate: float = 0.0
    max_tp: int = 8  # tensor-parallel degrees the optimizer may pick (powers of two up to this)
    # the controller's fixed costs (InstanceSpec's): of one switch, of starting an engine
    switch_overhead_s: float = 0.5
    restart_overhead_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("input_len", "output_len", "max_batch_size", "checkpoint_every", "max_tp"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("device_memory_mib", "network_gbps", "storage_gbps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("switch_overhead_s", "restart_overhead_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def instance(self) -> InstanceSpec:
        return InstanceSpec(
            name="live-cpu",
            gpus_per_instance=1,
            gpu_memory_gib=self.device_memory_mib / 1024,
            usable_memory_fraction=1.0,
            network_gbps=self.network_gbps,
            intra_gbps=self.network_gbps,
            storage_gbps=self.storage_gbps,
            switch_overhead_s=self.switch_overhead_s,
            restart_overhead_s=self.restart_overhead_s,
        )


@dataclass(frozen=True)
class ServedModel:
    """What the front end needs of the served model (the replicas hold the weights)."""

    arch: ModelArchConfig
    tokenizer: Any
    generation_config: dict
    max_model_len: int
    dtype: Any  # torch.dtype the replicas run in
    latency: LatencyModel  # the step-latency model the controller's profile comes from


def served_model(model: str, *, dtype: str = "auto") -> ServedModel:
    from ember.distributed.sharded_loader import load_checkpoint_info
    from ember.zoo import resolve_model

    info, torch_dtype = load_checkpoint_info(resolve_model(model), dtype=dtype, device="cpu")
    arch = info.config
    latency = LatencyModel.analytic(
        num_params=arch.num_layers * 12 * arch.hidden_size**2 + arch.vocab_size * arch.hidden_size,
        hidden_size=arch.hidden_size,
        num_layers=arch.num_layers,
    )
    return ServedModel(
        arch=arch,
        tokenizer=info.tokenizer,
        generation_config=info.generation_config,
        max_model_len=arch.max_position_embeddings,
        dtype=torch_dtype,
        latency=latency,
    )


def live_profile(
    arch: ModelArchConfig, latency: LatencyModel, *, input_len: int, max_tp: int = 8, batch_sizes=(1, 2, 4, 8, 16, 32)
) -> LatencyProfile:
    """SpotServe's per-layer profile from the engine's latency model ``t(n, ctx)``.

    NOTE: tensor parallelism is modelled as splitting the per-token work over tp ranks (not
    the fixed cost); on a machine whose ranks share cores it does not, and the live benchmark
    shows by how much the optimizer's estimate is off.
    """
    layers = arch.num_layers
    prefill, decode = {}, {}
    tps = [1 << k for k in range(int(math.log2(max_tp)) + 1)]
    for tp in tps:
        for bsz in batch_sizes:
            tokens = bsz * input_len
            work = latency.per_token_s * tokens + latency.per_pair_s * bsz * input_len**2 / 2
            prefill[(tp, bsz)] = 1e3 * (latency.fixed_s + work / tp) / layers
            step = latency.per_token_s * bsz + latency.per_pair_s * bsz * input_len
            decode[(tp, bsz)] = 1e3 * (latency.fixed_s + step / tp) / layers
    return LatencyProfile(
        name="live",
        num_layers=layers,
        num_padded_layers=layers,
        hidden_size=arch.hidden_size,
        max_tp=max_tp,
        fix_factor=1.0,
        pp_prefill_comm_ms=0.5,
        pp_decode_comm_ms=0.2,
        embed_ms=(0.1,),
        prefill_ms=prefill,
        decode_ms=decode,
        profiled_input_len=input_len,
    )


def build_controller(
    config: LiveDeploymentConfig,
    arch: ModelArchConfig,
    latency: LatencyModel,
    *,
    bytes_per_value: int,
    pool_instances: int | None = None,
) -> SpotController:
    instance = config.instance()
    memory = ModelMemory(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        vocab_size=arch.vocab_size,
        bytes_per_value=bytes_per_value,
    )
    optimizer = ParallelOptimizer(
        live_profile(arch, latency, input_len=config.input_len, max_tp=config.max_tp),
        memory,
        instance,
        OptimizerConfig(output_len=config.output_len, input_len=config.input_len, max_batch_size=config.max_batch_size),
    )
    return SpotController(
        policy=config.policy,
        optimizer=optimizer,
        planner=MigrationPlanner(memory, instance),
        instance=instance,
        pool_instances=pool_instances if config.policy == "reroute" else None,
    )
