"""What the cost model knows about a model and a machine: measured curves and fitted link
costs, as frozen values with a JSON form. ``ember.planner.profiler`` measures them; tests and
scale studies build them synthetically.

Conventions: times in seconds, sizes in bytes, "samples" = sequences of ``seq_len`` tokens.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "p2p")
PROFILE_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class Curve:
    """Piecewise-linear ``y(x)`` through measured points; linear extrapolation beyond them
    (through the origin's slope when there is one point)."""

    xs: tuple[float, ...]
    ys: tuple[float, ...]

    def __post_init__(self):
        object.__setattr__(self, "xs", tuple(float(x) for x in self.xs))
        object.__setattr__(self, "ys", tuple(float(y) for y in self.ys))
        if not self.xs or len(self.xs) != len(self.ys):
            raise ValueError(f"xs ({len(self.xs)}) and ys ({len(self.ys)}) must be equal, non-empty lengths")
        if any(b <= a for a, b in zip(self.xs, self.xs[1:])):
            raise ValueError(f"xs={self.xs} must be strictly increasing")

    def __call__(self, x: float) -> float:
        xs, ys = self.xs, self.ys
        if len(xs) == 1:
            return ys[0] * x / xs[0] if xs[0] else ys[0]
        i = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return max(y0 + (y1 - y0) * (x - x0) / (x1 - x0), 0.0)

    @classmethod
    def linear(cls, slope: float, intercept: float = 0.0) -> Curve:
        return cls(xs=(1.0, 2.0), ys=(intercept + slope, intercept + 2 * slope))


@dataclass(frozen=True, kw_only=True)
class LinkCost:
    """``time(bytes) = latency_s + bytes * seconds_per_byte`` for one collective and group
    size (bytes = the collective's full buffer: the all-reduce input, the all-gather output,
    the reduce-scatter input, the p2p message)."""

    latency_s: float
    seconds_per_byte: float

    def __call__(self, nbytes: float) -> float:
        return self.latency_s + nbytes * self.seconds_per_byte


@dataclass(frozen=True, kw_only=True)
class LayerProfile:
    """One decoder layer (all layers of the model share it). Keys of the curve dicts are
    TP degrees; x = samples the TP group processes per micro-batch."""

    num_params: int  # elements
    num_replicated_params: int  # elements TP does not shard (norm weights)
    forward_s: dict[int, Curve]
    backward_s: dict[int, Curve]
    activation_bytes: dict[int, Curve]  # saved for backward per rank (no checkpointing)
    boundary_bytes_per_sample: int  # one sample's layer input (= output): seq * hidden * 4
    # True when measured on the runtime's own TP layer: the TP all-reduces are in the times
    # and the ranks of the TP group were computing at once (see HardwareProfile.slowdown).
    measured_with_tp: bool = False
    # dp_type -> data-parallel degree -> seconds FSDP adds per micro-batch (forward +
    # backward) to this layer, measured on the real FSDP2 layer with every rank busy. Where
    # present it replaces the collective-curve estimate (hooks and copies dominate on CPUs).
    zero_overhead_s: dict[str, dict[int, float]] = field(default_factory=dict)
    # data-parallel degree -> seconds DDP gradient sync adds per layer and step (measured
    # with the runtime's GradSync on a stack of layers); replaces the all-reduce estimate.
    ddp_overhead_s: dict[int, float] = field(default_factory=dict)

    def sharded_params(self, tp: int) -> float:
        """Parameter elements one TP rank holds."""
        return (self.num_params - self.num_replicated_params) / tp + self.num_replicated_params

    @property
    def tp_degrees(self) -> tuple[int, ...]:
        return tuple(sorted(self.forward_s))


@dataclass(frozen=True, kw_only=True)
class ModelProfile:
    """A decoder-only model at one sequence length."""

    name: str
    seq_len: int
    hidden_size: int
    vocab_size: int
    num_layers: int
    layer: LayerProfile
    embed_params: int  # elements of the input embedding
    head_params: int  # elements of the final norm (+ the LM head when untied)
    tied_embeddings: bool  # pp > 1 then keeps a copy on the last stage, synced like Megatron
    # x = samples per rank per micro-batch (the tp = 1 layout):
    embed_forward_s: Curve
    embed_backward_s: Curve
    head_forward_s: Curve  # final norm + logits + loss
    head_backward_s: Curve
    head_activation_bytes: Curve
    optimizer_s_per_param: float  # AdamW step + grad-norm share, per local parameter
    version: int = PROFILE_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelProfile:
        data = dict(data)
        if data.get("version") != PROFILE_VERSION:
            raise ValueError(f"model profile version {data.get('version')!r} != {PROFILE_VERSION}")
        layer = dict(data["layer"])
        for key in ("forward_s", "backward_s", "activation_bytes"):
            layer[key] = {int(tp): Curve(**c) for tp, c in layer[key].items()}
        layer["ddp_overhead_s"] = {int(dp): float(v) for dp, v in layer.get("ddp_overhead_s", {}).items()}
        layer["zero_overhead_s"] = {
            kind: {int(dp): float(s) for dp, s in table.items()}
            for kind, table in layer.get("zero_overhead_s", {}).items()
        }
        data["layer"] = LayerProfile(**layer)
        for key in (
            "embed_forward_s",
            "embed_backward_s",
            "head_forward_s",
            "head_backward_s",
            "head_activation_bytes",
        ):
            data[key] = Curve(**data[key])
        return cls(**data)


@dataclass(frozen=True, kw_only=True)
class HardwareProfile:
    """Collective costs per group size, how compute and communication overlap, and how
    compute slows when several ranks share a machine's cores (1.0 on one-GPU-per-rank).

    ``overlap_slowdown`` k in [1, 2]: compute c and communication m issued together take
    ``max(c, m) + (k - 1) * min(c, m)`` (1 = perfect overlap, 2 = serial).
    """

    name: str
    links: dict[str, dict[int, LinkCost]]  # collective -> group size -> cost
    overlap_slowdown: float = 1.0
    compute_slowdown: dict[int, float] = field(default_factory=lambda: {1: 1.0})
    devices_per_node: int = 8  # TP groups are kept inside one node
    # Seconds per (stage, micro-batch) slot of the pipeline schedule itself (scheduling, p2p
    # latency); None = from the p2p link only.
    pipeline_s_per_micro_batch: float | None = None
    version: int = PROFILE_VERSION

    def __post_init__(self):
        if not 1.0 <= self.overlap_slowdown <= 2.0:
            raise ValueError(f"overlap_slowdown={self.overlap_slowdown} must be in [1, 2]")
        for kind in COLLECTIVES:
            if not self.links.get(kind):
                raise ValueError(f"links[{kind!r}] must list at least one group size")

    def collective_s(self, kind: str, group_size: int, nbytes: float) -> float:
        """Seconds for one collective; 0 for a group of one. Unmeasured group sizes use the
        nearest measured one, scaling the bandwidth term like a ring ((g - 1) / g)."""
        if group_size <= 1 or nbytes <= 0:
            return 0.0
        table = self.links[kind]
        if group_size in table:
            return table[group_size](nbytes)
        nearest = min(table, key=lambda g: (abs(g - group_size), -g))
        cost = table[nearest]
        if kind == "p2p":
            return cost(nbytes)
        ring = ((group_size - 1) / group_size) / ((nearest - 1) / nearest)
        return cost.latency_s + nbytes * cost.seconds_per_byte * ring

    def overlapped_s(self, compute_s: float, comm_s: float) -> float:
        return max(compute_s, comm_s) + (self.overlap_slowdown - 1.0) * min(compute_s, comm_s)

    def slowdown(self, num_devices: int) -> float:
        table = self.compute_slowdown
        if num_devices in table:
            return table[num_devices]
        below = [n for n in table if n <= num_devices]
        return table[max(below)] if below else table[min(table)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> HardwareProfile:
        data = dict(data)
        if data.get("version") != PROFILE_VERSION:
            raise ValueError(f"hardware profile version {data.get('version')!r} != {PROFILE_VERSION}")
        data["links"] = {
            kind: {int(g): LinkCost(**c) for g, c in table.items()} for kind, table in data["links"].items()
        }
        data["compute_slowdown"] = {int(n): float(v) for n, v in data["compute_slowdown"].items()}
        return cls(**data)


def save_profile(path: Path, profile: ModelProfile | HardwareProfile) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(profile.to_dict(), indent=1) + "\n")


def load_model_profile(path: Path) -> ModelProfile:
    return ModelProfile.from_dict(json.loads(Path(path).read_text()))


def load_hardware_profile(path: Path) -> HardwareProfile:
    return HardwareProfile.from_dict(json.loads(Path(path).read_text()))


def cluster_hardware(
    *,
    name: str = "synthetic-8gpu-nodes",
    intra_node_gbps: float = 150.0,
    inter_node_gbps: float = 12.5,
    devices_per_node: int = 8,
    max_devices: int = 64,
    latency_s: float = 20e-6,
    overlap_slowdown: float = 1.3,
) -> HardwareProfile:
    """A synthetic GPU-cluster profile (GB/s bus bandwidths) for scale studies and tests:
    groups up to one node use the intra-node bandwidth, larger ones the inter-node one."""
    links: dict[str, dict[int, LinkCost]] = {kind: {} for kind in COLLECTIVES}
    g = 2
    while g <= max_devices:
        gbps = intra_node_gbps if g <= devices_per_node else inter_node_gbps
        ring = (g - 1) / g / (gbps * 1e9)
        latency = latency_s * g
        links["all_reduce"][g] = LinkCost(latency_s=latency, seconds_per_byte=2 * ring)
        links["all_gather"][g] = LinkCost(latency_s=latency, seconds_per_byte=ring)
        links["reduce_scatter"][g] = LinkCost(latency_s=latency, seconds_per_byte=ring)
        links["p2p"][g] = LinkCost(latency_s=latency_s, seconds_per_byte=1.0 / (inter_node_gbps * 1e9))
        g *= 2
    return HardwareProfile(name=name, links=links, overlap_slowdown=overlap_slowdown, devices_per_node=devices_per_node)


def analytic_model(
    *,
    name: str = "analytic",
    num_layers: int = 32,
    hidden_size: int = 4096,
    intermediate_size: int = 11008,
    num_heads: int = 32,
    vocab_size: int = 32000,
    seq_len: int = 2048,
    flops_per_s: float = 150e12,
    bytes_per_value: int = 2,
    tp_degrees: tuple[int, ...] = (1, 2, 4, 8),
) -> ModelProfile:
    """A FLOP-count model profile of a Llama-shaped decoder (for scale studies and tests,
    where nothing can be measured): forward = 2 * params * tokens + attention, backward =
    2 x forward, activations per the Megatron-LM estimate (Korthikanti et al. 2022)."""
    h, s, f = hidden_size, seq_len, intermediate_size
    params = 4 * h * h + 3 * h * f + 2 * h
    replicated = 2 * h

    def fwd_s(tp: int) -> Curve:
        per_sample = (2 * (params - replicated) * s + 4 * s * s * h) / tp
        return Curve.linear(per_sample / flops_per_s, 50e-6)

    def act(tp: int) -> Curve:
        # Megatron-LM: s*b*h*(10 + 24/t) + 5*a*s^2*b/t bytes at 2 bytes/value; scaled by dtype.
        per_sample = s * h * (10 + 24 / tp) + 5 * num_heads * s * s / tp
        return Curve.linear(per_sample * bytes_per_value / 2)

    forward = {tp: fwd_s(tp) for tp in tp_degrees}
    backward = {tp: Curve(xs=c.xs, ys=tuple(2 * y for y in c.ys)) for tp, c in forward.items()}
    head_fwd = 2 * vocab_size * h * s / flops_per_s
    return ModelProfile(
        name=name,
        seq_len=s,
        hidden_size=h,
        vocab_size=vocab_size,
        num_layers=num_layers,
        layer=LayerProfile(
            num_params=params,
            num_replicated_params=replicated,
            forward_s=forward,
            backward_s=backward,
            activation_bytes={tp: act(tp) for tp in tp_degrees},
            boundary_bytes_per_sample=s * h * bytes_per_value,
        ),
        embed_params=vocab_size * h,
        head_params=vocab_size * h + h,
        tied_embeddings=False,
        embed_forward_s=Curve.linear(s * h * bytes_per_value / 1e12, 10e-6),
        embed_backward_s=Curve.linear(2 * s * h * bytes_per_value / 1e12, 10e-6),
        head_forward_s=Curve.linear(head_fwd, 20e-6),
        head_backward_s=Curve.linear(2 * head_fwd, 20e-6),
        head_activation_bytes=Curve.linear(2 * s * vocab_size * 4),
        optimizer_s_per_param=16 / 1e12,
    )
