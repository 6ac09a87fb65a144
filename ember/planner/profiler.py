"""The profiler: measures a model and this machine on the real backend (gloo on CPU, NCCL on
GPUs) and turns the measurements into a ``ModelProfile`` and a ``HardwareProfile``.

Jobs (each a set of ranks on 127.0.0.1, ``ember.planner.profile_worker``):

1. hardware, ``max_devices`` ranks: collective times per group size and message size,
   compute/communication overlap, compute slowdown with k ranks busy, what FSDP2 and DDP
   gradient sync add per layer of the model per data-parallel degree, and the pipeline
   schedule's own cost per (stage, micro-batch) slot;
2. decoder layers per TP degree t, t ranks, sharded exactly as the runtime shards them (a
   stack of two, per layer): forward/backward seconds and saved-activation bytes per
   micro-batch size; with t = 1 also the embedding, head + loss and optimizer.

Results are cached as JSON under ``cache_dir``, keyed by everything that changes them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ember.planner.profiles import (
    Curve,
    HardwareProfile,
    LayerProfile,
    LinkCost,
    ModelProfile,
)
from ember.train.config import ModelShape
from ember.train.parallel.layers import tp_limit
from ember.train.parallel.probe import launch_local


@dataclass(frozen=True, kw_only=True)
class ProfileSpec:
    """What to profile."""

    name: str
    shape: ModelShape
    vocab_size: int
    seq_len: int
    max_devices: int = 4  # ranks of the hardware job; the largest TP degree profiled
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)  # samples per TP group per micro-batch
    message_bytes: tuple[int, ...] = (4096, 65536, 1 << 20, 4 << 20)
    repeats: int = 5

    def __post_init__(self):
        for name in ("vocab_size", "seq_len", "max_devices", "repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch_sizes={self.batch_sizes} must be positive")

    @property
    def tp_degrees(self) -> tuple[int, ...]:
        limit = min(
            self.max_devices, tp_limit(self.shape.num_heads, self.shape.num_kv_heads, self.shape.intermediate_size)
        )
        out, t = [], 1
        while t <= limit:
            out.append(t)
            t *= 2
        return tuple(out)

    def cache_key(self) -> str:
        data = dataclasses.asdict(self)
        data["machine"] = [platform.node(), platform.machine(), torch.__version__, torch.get_num_threads()]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def profile(
    spec: ProfileSpec,
    *,
    cache_dir: Path | None = None,
    refresh: bool = False,
    progress: bool = True,
    timeout_s: float = 900,
) -> tuple[ModelProfile, HardwareProfile]:
    """Measure (or load from the cache) the profiles of ``spec`` on this machine."""
    cache = None if cache_dir is None else Path(cache_dir) / f"{spec.name}-{spec.cache_key()}.json"
    if cache is not None and cache.is_file() and not refresh:
        data = json.loads(cache.read_text())
        _say(progress, f"profile: cached {cache}")
        return ModelProfile.from_dict(data["model"]), HardwareProfile.from_dict(data["hardware"])
    jobs = [("hardware", spec.max_devices)] + [("layer", t) for t in spec.tp_degrees]
    raw: dict = {}
    with tempfile.TemporaryDirectory(prefix="ember-profile-") as tmp:
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(
            json.dumps(
                {
                    "shape": dataclasses.asdict(spec.shape),
                    "vocab_size": spec.vocab_size,
                    "seq_len": spec.seq_len,
                    "batch_sizes": list(spec.batch_sizes),
                    "message_bytes": list(spec.message_bytes),
                    "repeats": spec.repeats,
                }
            )
        )
        for i, (task, ranks) in enumerate(jobs, 1):
            label = "collectives" if task == "hardware" else f"layer tp={ranks}"
            _say(progress, f"profile [{i}/{len(jobs)}] {label} on {ranks} rank(s) ...")
            start = time.perf_counter()
            out = Path(tmp) / f"{task}{ranks}.json"
            launch_local(
                ["ember.planner.profile_worker", "--task", task, "--spec", str(spec_file), "--out", str(out)],
                ranks,
                timeout_s=timeout_s,
            )
            raw[(task, ranks)] = json.loads(out.read_text())
            _say(progress, f"profile [{i}/{len(jobs)}] {label}: {time.perf_counter() - start:.1f} s")
    hardware = hardware_from_measurements(spec.name, raw[("hardware", spec.max_devices)])
    measured = raw[("hardware", spec.max_devices)]
    model = model_from_measurements(
        spec,
        {t: raw[("layer", t)] for t in spec.tp_degrees},
        zero_overhead_s=measured.get("zero_overhead_s", {}),
        ddp_overhead_s=measured.get("ddp_overhead_s", {}),
    )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"model": model.to_dict(), "hardware": hardware.to_dict()}, indent=1) + "\n")
        _say(progress, f"profile: saved {cache}")
    return model, hardware


def fit_link(points: list[tuple[float, float]]) -> LinkCost:
    """Least-squares ``t = a + b * bytes`` with ``a, b >= 0``."""
    xs = [float(x) for x, _ in points]
    ys = [float(y) for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0
    a = my - b * mx
    if b < 0:
        a, b = my, 0.0
    elif a < 0:
        a, b = 0.0, sum(x * y for x, y in zip(xs, ys)) / max(sum(x * x for x in xs), 1e-30)
    return LinkCost(latency_s=a, seconds_per_byte=b)


def monotone_curve(xs, ys) -> Curve:
    """A curve through the measurements, made non-decreasing (timing noise never makes a
    bigger batch cheaper)."""
    out, top = [], 0.0
    for y in ys:
        top = max(top, float(y))
        out.append(top)
    return Curve(xs=tuple(float(x) for x in xs), ys=tuple(out))


def hardware_from_measurements(name: str, raw: dict) -> HardwareProfile:
    links = {kind: {int(g): fit_link(points) for g, points in table.items()} for kind, table in raw["links"].items()}
    return HardwareProfile(
        name=f"{name}@{platform.node()}",
        links=links,
        overlap_slowdown=float(raw["overlap_slowdown"]),
        compute_slowdown={int(k): float(v) for k, v in raw["compute_slowdown"].items()},
        devices_per_node=int(raw["world"]),
        pipeline_s_per_micro_batch=raw.get("pipeline_s_per_micro_batch"),
    )


def model_from_measurements(
    spec: ProfileSpec,
    layers: dict[int, dict],
    *,
    zero_overhead_s: dict | None = None,
    ddp_overhead_s: dict | None = None,
) -> ModelProfile:
    base = layers[1]

    def curves(key: str) -> dict[int, Curve]:
        return {t: monotone_curve(r["batch"], r[key]) for t, r in layers.items()}

    layer = LayerProfile(
        num_params=base["num_params"],
        num_replicated_params=base["num_replicated_params"],
        forward_s=curves("forward_s"),
        backward_s=curves("backward_s"),
        activation_bytes=curves("activation_bytes"),
        boundary_bytes_per_sample=base["boundary_bytes_per_sample"],
        measured_with_tp=True,
        zero_overhead_s={
            kind: {int(dp): float(v) for dp, v in table.items()} for kind, table in (zero_overhead_s or {}).items()
        },
        ddp_overhead_s={int(dp): float(v) for dp, v in (ddp_overhead_s or {}).items()},
    )
    xs = base["ends_batch"]
    return ModelProfile(
        name=spec.name,
        seq_len=spec.seq_len,
        hidden_size=spec.shape.hidden_size,
        vocab_size=spec.vocab_size,
        num_layers=spec.shape.num_layers,
        layer=layer,
        embed_params=base["embed_params"],
        head_params=base["head_params"],
        tied_embeddings=base["tied_embeddings"],
        embed_forward_s=monotone_curve(xs, base["embed_forward_s"]),
        embed_backward_s=monotone_curve(xs, base["embed_backward_s"]),
        head_forward_s=monotone_curve(xs, base["head_forward_s"]),
        head_backward_s=monotone_curve(xs, base["head_backward_s"]),
        head_activation_bytes=monotone_curve(xs, base["head_activation_bytes"]),
        optimizer_s_per_param=base["optimizer_s_per_param"],
    )


def _say(enabled: bool, message: str) -> None:
    if enabled:
        import sys

        print(message, file=sys.stderr, flush=True)
