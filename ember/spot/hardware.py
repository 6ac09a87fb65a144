"""The instance type and the model's memory footprint: what the optimizer and the migration
planner need to know about bytes, bandwidths and prices.

Defaults describe the SpotServe testbed: AWS g4dn.12xlarge (4 x NVIDIA T4 16 GB, 50 Gbps
network). Prices are the SpotServe artifact's; load bandwidths are assumptions; docs/spot.md
gives their sources.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True, kw_only=True)
class InstanceSpec:
    """One cloud instance type."""

    name: str = "g4dn.12xlarge"
    gpus_per_instance: int = 4
    gpu_memory_gib: float = 16.0
    # NOTE: the engine's workspace, CUDA context and fragmentation take the rest.
    usable_memory_fraction: float = 0.9
    network_gbps: float = 50.0  # between instances (SpotServe: 50,000 Mbps)
    intra_gbps: float = 50.0  # between GPUs of one instance (SpotServe uses the same figure)
    storage_gbps: float = 8.0  # loading a checkpoint from disk, per instance (1 GB/s)
    switch_overhead_s: float = 0.5  # SpotServe's fixed cost of one switch
    restart_overhead_s: float = 10.0  # relaunching engines (process start, NCCL init)
    # The artifact's prices (Hsword/SpotServe@832b29f elastic-switch/scripts_ae/tradeoff_plot.py:25-26,
    # "ondemand node price: 3.912 dollar/hour", "spot node price: 1.9046 dollar/hour"; used at
    # lines 28-31 and 97) for a g4dn.12xlarge.
    spot_price_per_hour: float = 1.9046
    ondemand_price_per_hour: float = 3.912

    def __post_init__(self) -> None:
        for name in ("gpus_per_instance", "gpu_memory_gib", "network_gbps", "intra_gbps", "storage_gbps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"InstanceSpec.{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.usable_memory_fraction <= 1:
            raise ValueError(
                f"InstanceSpec.usable_memory_fraction must be in (0, 1], got {self.usable_memory_fraction}"
            )
        for name in ("switch_overhead_s", "restart_overhead_s", "spot_price_per_hour", "ondemand_price_per_hour"):
            if getattr(self, name) < 0:
                raise ValueError(f"InstanceSpec.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def usable_gpu_bytes(self) -> int:
        return int(self.gpu_memory_gib * GIB * self.usable_memory_fraction)

    @property
    def network_bytes_per_s(self) -> float:
        return self.network_gbps * 1e9 / 8

    @property
    def intra_bytes_per_s(self) -> float:
        return self.intra_gbps * 1e9 / 8

    @property
    def storage_bytes_per_s(self) -> float:
        return self.storage_gbps * 1e9 / 8


@dataclass(frozen=True, kw_only=True)
class ModelMemory:
    """Bytes of a GPT-style decoder: 12 h^2 parameters per layer, a `vocab x h` embedding on the
    first and the last pipeline stage, K and V of `h` values per token per layer, each value
    `bytes_per_value` bytes. The optimizer's memory check and the migration planner's byte counts
    (hence its time estimate) both come from here."""

    num_layers: int
    hidden_size: int
    vocab_size: int = 50304
    # NOTE: 2 = fp16 weights and KV, what Ember serves. The SpotServe artifact runs FasterTransformer
    # in fp32 (`data_type=fp32`, FasterTransformer/examples/cpp/multi_gpu_gpt/configs/
    # gpt_config_{6.7B,h6144,h7168}.ini:11) and its transfer estimate counts 32 bits per element
    # (elastic-switch/global_server/Switch.py:553-554, `comm *= 32 #Mb`); pass 4 to match it.
    bytes_per_value: int = 2

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "vocab_size", "bytes_per_value"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelMemory.{name} must be positive, got {getattr(self, name)}")

    @property
    def layer_bytes(self) -> int:
        return 12 * self.hidden_size**2 * self.bytes_per_value

    @property
    def embed_bytes(self) -> int:
        return self.vocab_size * self.hidden_size * self.bytes_per_value

    @property
    def kv_bytes_per_token_layer(self) -> int:
        return 2 * self.hidden_size * self.bytes_per_value

    @property
    def total_param_bytes(self) -> int:
        return self.num_layers * self.layer_bytes + 2 * self.embed_bytes

    def layers_of_stage(self, stage: int, pp: int) -> range:
        """Layers on pipeline stage `stage`: contiguous blocks of ceil(L / pp)."""
        per = math.ceil(self.num_layers / pp)
        return range(min(stage * per, self.num_layers), min((stage + 1) * per, self.num_layers))

    def weight_bytes_per_gpu(self, tp: int, pp: int) -> int:
        """Largest per-GPU weight footprint over the stages (first/last stage hold the embedding)."""
        per = math.ceil(self.num_layers / pp)
        embeds = 2 if pp == 1 else 1
        return (per * self.layer_bytes + embeds * self.embed_bytes) // tp

    def kv_bytes_per_gpu(self, tp: int, pp: int, num_tokens: int) -> int:
        per = math.ceil(self.num_layers / pp)
        return per * num_tokens * self.kv_bytes_per_token_layer // tp
