"""What a hybrid-parallel training plan is: a pipeline split over layers, one strategy per
decoder layer, and the batch. Frozen keyword-only values; ``__post_init__`` names a bad field.

Device layout (the runtime builds exactly this; the cost model prices exactly this)::

    rank = stage * devices_per_stage + local            stage: pipeline stage, 0..pp-1
    layer with tp = t inside a stage:  tp_rank = local % t,  dp_rank = local // t

Every stage starts and ends in the "tp = 1 layout": local rank ``r`` holds samples
``[r * c, (r + 1) * c)`` of each micro-batch, ``c = micro_batch_size / devices_per_stage``.
A layer with ``tp = t`` works on the ``t * c`` samples of its TP group (replicated inside the
group); between layers of different ``t`` the runtime re-lays the batch out (all-gather one
way, slice the other), which the cost model prices as a transition.

The JSON form (``to_json``/``from_json``) is versioned: ``{"format": "ember-plan",
"version": 1, ...fields...}``; extra top-level keys (``prediction``, ``alternatives``) are
informational and ignored when loading.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

PLAN_FORMAT = "ember-plan"
PLAN_VERSION = 1
DP_TYPES = ("ddp", "zero2", "zero3")
SCHEDULES = ("gpipe", "1f1b")
DpType = Literal["ddp", "zero2", "zero3"]
Schedule = Literal["gpipe", "1f1b"]


def is_power_of_two(n: int) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1 and n & (n - 1) == 0


def _check_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


@dataclass(frozen=True, kw_only=True, order=True)
class LayerStrategy:
    """How one decoder layer runs on the devices of its pipeline stage.

    ``dp_type``: how the ``devices_per_stage / tp`` data-parallel replicas keep the layer's
    state: ``ddp`` (replicated; gradients all-reduced once per step), ``zero2`` (FSDP2 with
    ``reshard_after_forward=False``: gradients and optimizer state sharded), ``zero3`` (FSDP2:
    parameters too). ``checkpoint``: recompute the layer's activations in backward.
    """

    tp: int = 1
    dp_type: DpType = "ddp"
    checkpoint: bool = False

    def __post_init__(self):
        if not is_power_of_two(self.tp):
            raise ValueError(f"tp={self.tp!r} must be a power of two")
        if self.dp_type not in DP_TYPES:
            raise ValueError(f"dp_type={self.dp_type!r} is not one of {DP_TYPES}")
        if not isinstance(self.checkpoint, bool):
            raise ValueError(f"checkpoint={self.checkpoint!r} must be a bool")

    def label(self, devices_per_stage: int) -> str:
        """e.g. ``tp2.dp4.zero3.ckpt``."""
        dp = devices_per_stage // self.tp
        parts = [f"tp{self.tp}", f"dp{dp}"]
        if dp > 1 and self.dp_type != "ddp":
            parts.append(self.dp_type)
        if self.checkpoint:
            parts.append("ckpt")
        return ".".join(parts)


@dataclass(frozen=True, kw_only=True)
class Plan:
    """A complete hybrid-parallel plan for one model on ``num_devices`` devices."""

    num_devices: int
    pp: int
    stage_layers: tuple[int, ...]  # decoder layers per stage, in order
    layers: tuple[LayerStrategy, ...]  # one per decoder layer
    global_batch_size: int  # sequences per optimizer step, all devices together
    num_micro_batches: int  # per step (pipeline micro-batches / gradient accumulation)
    schedule: Schedule = "1f1b"
    version: int = field(default=PLAN_VERSION)

    def __post_init__(self):
        object.__setattr__(self, "stage_layers", tuple(self.stage_layers))
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.version != PLAN_VERSION:
            raise ValueError(f"version={self.version!r}: this Ember reads plan version {PLAN_VERSION}")
        for name in ("num_devices", "pp", "global_batch_size", "num_micro_batches"):
            _check_int(name, getattr(self, name))
        if self.num_devices % self.pp:
            raise ValueError(f"pp={self.pp} must divide num_devices={self.num_devices}")
        if len(self.stage_layers) != self.pp:
            raise ValueError(f"stage_layers={list(self.stage_layers)} must have pp={self.pp} entries")
        for count in self.stage_layers:
            _check_int("stage_layers[...]", count)
        if sum(self.stage_layers) != len(self.layers):
            raise ValueError(
                f"stage_layers={list(self.stage_layers)} sums to {sum(self.stage_layers)}, "
                f"but layers has {len(self.layers)} entries"
            )
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, LayerStrategy):
                raise ValueError(f"layers[{i}]={layer!r} is not a LayerStrategy")
            if self.devices_per_stage % layer.tp:
                raise ValueError(f"layers[{i}].tp={layer.tp} must divide devices_per_stage={self.devices_per_stage}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} is not one of {SCHEDULES}")
        per_step = self.num_micro_batches * self.devices_per_stage
        if self.global_batch_size % per_step:
            raise ValueError(
                f"global_batch_size={self.global_batch_size} must be a multiple of "
                f"num_micro_batches * devices_per_stage = {per_step}"
            )

    # ---- derived values
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def devices_per_stage(self) -> int:
        return self.num_devices // self.pp

    @property
    def micro_batch_size(self) -> int:
        return self.global_batch_size // self.num_micro_batches

    @property
    def samples_per_rank(self) -> int:
        """Samples of one micro-batch that one rank holds in the tp = 1 layout."""
        return self.micro_batch_size // self.devices_per_stage

    def stage_range(self, stage: int) -> range:
        start = sum(self.stage_layers[:stage])
        return range(start, start + self.stage_layers[stage])

    def stage_of_layer(self, layer: int) -> int:
        for stage in range(self.pp):
            if layer in self.stage_range(stage):
                return stage
        raise IndexError(f"layer {layer} out of range")

    def dp_degree(self, layer: int) -> int:
        return self.devices_per_stage // self.layers[layer].tp

    def check_model(self, *, num_layers: int, tp_limit: int) -> None:
        """Raise ValueError if this plan cannot run a model with ``num_layers`` decoder
        layers whose heads allow TP degrees up to ``tp_limit``."""
        if self.num_layers != num_layers:
            raise ValueError(f"plan has {self.num_layers} layers; the model has {num_layers}")
        for i, layer in enumerate(self.layers):
            if tp_limit % layer.tp:
                raise ValueError(f"layers[{i}].tp={layer.tp}: the model's heads allow TP degrees dividing {tp_limit}")

    def describe(self) -> str:
        """One line: ``pp2 [4+4] gbs16 mb4 1f1b: tp2.dp2 x3, tp1.dp4.zero3 x5``."""
        runs: list[list] = []
        for layer in self.layers:
            label = layer.label(self.devices_per_stage)
            if runs and runs[-1][0] == label:
                runs[-1][1] += 1
            else:
                runs.append([label, 1])
        split = "+".join(map(str, self.stage_layers))
        body = ", ".join(f"{label} x{n}" for label, n in runs)
        return f"pp{self.pp} [{split}] gbs{self.global_batch_size} mb{self.num_micro_batches} {self.schedule}: {body}"

    # ---- JSON
    def to_dict(self) -> dict:
        data = asdict(self)
        data["stage_layers"] = list(self.stage_layers)
        data["layers"] = [asdict(layer) for layer in self.layers]
        return {"format": PLAN_FORMAT, **data}

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        """Parse a plan; raises ValueError naming the bad or missing field."""
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise ValueError(f"format must be {PLAN_FORMAT!r}")
        known = {
            "num_devices",
            "pp",
            "stage_layers",
            "layers",
            "global_batch_size",
            "num_micro_batches",
            "schedule",
            "version",
        }
        missing = sorted(known - {"schedule"} - set(data))
        if missing:
            raise ValueError(f"plan is missing field(s) {missing}")
        fields = {k: v for k, v in data.items() if k in known}
        if not isinstance(fields["layers"], list):
            raise ValueError("layers must be a list")
        layers = []
        for i, item in enumerate(fields["layers"]):
            try:
                layers.append(LayerStrategy(**item))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"layers[{i}]: {exc}") from None
        fields["layers"] = tuple(layers)
        fields["stage_layers"] = tuple(fields["stage_layers"])
        return cls(**fields)

    def to_json(self, **extra: Any) -> str:
        return json.dumps({**self.to_dict(), **extra}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))

    def save(self, path: Path, **extra: Any) -> None:
        Path(path).write_text(self.to_json(**extra))

    @classmethod
    def load(cls, path: Path) -> Plan:
        """Raises ValueError (bad content) or OSError (unreadable file)."""
        try:
            return cls.from_json(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON ({exc})") from None


def uniform_plan(
    *,
    num_devices: int,
    num_layers: int,
    pp: int = 1,
    strategy: LayerStrategy = LayerStrategy(),
    global_batch_size: int,
    num_micro_batches: int = 1,
    schedule: Schedule = "1f1b",
) -> Plan:
    """Every layer the same strategy; layers split as evenly as possible (earlier stages get
    the extra layers)."""
    base, extra = divmod(num_layers, pp)
    split = tuple(base + (1 if s < extra else 0) for s in range(pp))
    return Plan(
        num_devices=num_devices,
        pp=pp,
        stage_layers=split,
        layers=(strategy,) * num_layers,
        global_batch_size=global_batch_size,
        num_micro_batches=num_micro_batches,
        schedule=schedule,
    )
