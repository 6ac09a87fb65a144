"""Per-layer latency profile of one model (SpotServe's `megatron_<model>_profile.json`) and the
batch latency model built on it.

The JSON holds, per tensor-parallel degree `tp` and batch size `bsz`, the time in ms that one
transformer layer takes for the prefill ("init", a `bsz x 512` prompt) and for one decode step
("incr"); plus the pipeline hand-off costs, the embedding time per log2(bsz) and a fix factor.
The latency of one batch on a (tp, pp, M1, M2) pipeline follows SpotServe's controller:

    L_s = ceil(layers / pp)                                   # layers of the slowest stage
    t1  = init[tp][bsz/M1] * L_s * (pp + M1 - 1) / M1 + pp_init_comm / M1 * (pp - 1)
    t2  = incr[tp][bsz/M2] * L_s * (pp + M2 - 1)      + pp_incr_comm / M2 * (pp - 1)
    lat = f * (t1 + S_out * t2 + 2 * embed[log2 bsz])
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ember.errors import InvalidInputError


class BatchLatency(NamedTuple):
    """Seconds of one batch on one replica: `fixed_s + prefill_s + steps * step_s`."""

    prefill_s: float
    step_s: float
    fixed_s: float

    def duration_s(self, num_steps: int, *, with_prefill: bool = True, prefill_scale: float = 1.0) -> float:
        prefill = self.prefill_s * prefill_scale if with_prefill else 0.0
        return self.fixed_s + prefill + num_steps * self.step_s


@dataclass(frozen=True, kw_only=True)
class LatencyProfile:
    """Measured per-layer latencies of one model; see the module docstring for the model."""

    name: str
    num_layers: int
    num_padded_layers: int
    hidden_size: int
    max_tp: int
    fix_factor: float
    pp_prefill_comm_ms: float
    pp_decode_comm_ms: float
    embed_ms: tuple[float, ...]
    # (tp, bsz) -> ms per layer
    prefill_ms: Mapping[tuple[int, int], float] = field(repr=False)
    decode_ms: Mapping[tuple[int, int], float] = field(repr=False)
    # NOTE: SpotServe profiled prompts of 512 tokens; longer prompts scale the prefill linearly.
    profiled_input_len: int = 512

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_padded_layers", "hidden_size", "max_tp", "profiled_input_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LatencyProfile.{name} must be positive, got {getattr(self, name)}")
        if self.num_padded_layers < self.num_layers:
            raise ValueError(
                f"LatencyProfile.num_padded_layers ({self.num_padded_layers}) < num_layers ({self.num_layers})"
            )
        if self.fix_factor <= 0:
            raise ValueError(f"LatencyProfile.fix_factor must be positive, got {self.fix_factor}")
        if not self.embed_ms:
            raise ValueError("LatencyProfile.embed_ms must not be empty")
        if set(self.prefill_ms) != set(self.decode_ms):
            raise ValueError("LatencyProfile.prefill_ms and decode_ms must cover the same (tp, bsz) keys")

    @property
    def tp_degrees(self) -> tuple[int, ...]:
        return tuple(sorted({tp for tp, _ in self.prefill_ms if tp <= self.max_tp}))

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({b for _, b in self.prefill_ms}))

    def has(self, tp: int, bsz: int) -> bool:
        return (tp, bsz) in self.prefill_ms

    def batch_latency(
        self, *, tp: int, pp: int, batch_size: int, prefill_micro: int = 1, decode_micro: int = 1
    ) -> BatchLatency:
        """Latency of one batch of `batch_size` requests; KeyError if the profile lacks the point."""
        m1, m2 = min(prefill_micro, batch_size), min(decode_micro, batch_size)
        layers_per_stage = math.ceil(self.num_layers / pp)
        init = self.prefill_ms[(tp, batch_size // m1)]
        incr = self.decode_ms[(tp, batch_size // m2)]
        t1 = init * layers_per_stage * (pp + m1 - 1) / m1 + self.pp_prefill_comm_ms / m1 * (pp - 1)
        t2 = incr * layers_per_stage * (pp + m2 - 1) + self.pp_decode_comm_ms / m2 * (pp - 1)
        embed_idx = min(batch_size.bit_length() - 1, len(self.embed_ms) - 1)
        f = self.fix_factor / 1000.0
        return BatchLatency(prefill_s=f * t1, step_s=f * t2, fixed_s=f * 2 * self.embed_ms[embed_idx])


def load_profile(path: str | Path) -> LatencyProfile:
    """Read a SpotServe profile JSON; raises InvalidInputError naming the missing key or file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInputError(f"profile file not found: {path}", param="profile") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"cannot read profile {path}: {exc}", param="profile") from None
    try:
        prefill, decode = {}, {}
        for key, per_bsz in raw.items():
            if not key.startswith("tp-"):
                continue
            tp = int(key[3:])
            for bkey, point in per_bsz.items():
                bsz = int(bkey.removeprefix("bsz-"))
                prefill[(tp, bsz)] = float(point["init"])
                decode[(tp, bsz)] = float(point["incr"])
        max_tp = int(raw.get("max_tp", max(tp for tp, _ in prefill)))
        return LatencyProfile(
            name=str(raw.get("name", path.stem)),
            num_layers=int(raw["layer_num"]),
            num_padded_layers=int(raw.get("padded_layer_num", raw["layer_num"])),
            hidden_size=int(raw["hidden_size"]),
            max_tp=max_tp,
            fix_factor=float(raw.get("final_fix_factor", 1.0)),
            pp_prefill_comm_ms=float(raw["pp_init_comm"]),
            pp_decode_comm_ms=float(raw["pp_incr_comm"]),
            embed_ms=tuple(float(x) for x in raw["embed"]),
            prefill_ms=prefill,
            decode_ms=decode,
        )
    except KeyError as exc:
        raise InvalidInputError(f"profile {path} lacks key {exc}", param="profile") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise InvalidInputError(f"profile {path} is malformed: {exc}", param="profile") from None
