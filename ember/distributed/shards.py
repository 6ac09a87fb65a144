"""Which slice of each checkpoint tensor a (pipeline stage, tensor rank) holds.

One rule table serves the sharded loader and the re-sharding planner:

    column  q/k/v, gate/up, fc1 (weight and bias): output rows split by heads (unit
            head_dim) or by rows; KV heads replicate when there are fewer than ranks
    row     o_proj/out_proj, down_proj/fc2 weights: input columns split the same way;
            their biases are replicated and added once, after the all-reduce
    vocab   embed_tokens, lm_head: rows split in ceil(V / tp) chunks (the last padded)
    replicate  norms, learned positions, OPT's project_in/out, row biases

Names are Hugging Face names (q_proj, not Ember's fused qkv_proj), so a plan is about
checkpoint bytes whatever the in-memory fusion.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch

from ember.distributed.layout import ParallelLayout
from ember.models.config import ModelArchConfig

SplitKind = Literal["column", "row", "vocab", "replicate"]
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_COLUMN_HEADS = re.compile(r"self_attn\.(q|k|v)_proj\.(weight|bias)$")
_COLUMN_ROWS = re.compile(r"(mlp\.(gate|up)_proj|fc1)\.(weight|bias)$")
_ROW_HEADS = re.compile(r"self_attn\.(o|out)_proj\.weight$")
_ROW_COLS = re.compile(r"(mlp\.down_proj|fc2)\.weight$")
_VOCAB = re.compile(r"(embed_tokens|lm_head)\.weight$")
_FIRST_STAGE = re.compile(r"(embed_positions|project_in)\.weight$")


@dataclass(frozen=True)
class TensorSpec:
    name: str  # HF name (OPT: with the model.decoder. prefix); "kv.{layer}" for a KV cache
    shape: tuple[int, ...]
    split: SplitKind
    unit: int = 1  # rows/columns per indivisible unit (head_dim for heads)
    layer: int | None = None

    @property
    def dim(self) -> int:
        return 1 if self.split == "row" else 0


@dataclass(frozen=True)
class Slice:
    """Indices ``[start, stop)`` of ``dim`` (every index of the other dims)."""

    dim: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def split_range(size: int, unit: int, tp: int, rank: int) -> tuple[int, int]:
    """Rank ``rank``'s part of ``size`` indices cut into ``size // unit`` units: contiguous
    equal chunks when tp divides the units, else (units divide tp) one unit shared by
    ``tp // units`` consecutive ranks."""
    units = size // unit
    if units % tp == 0:
        chunk = size // tp
        return rank * chunk, (rank + 1) * chunk
    if tp % units == 0:
        index = rank // (tp // units)
        return index * unit, (index + 1) * unit
    raise ValueError(f"{units} units of {unit} cannot be split over {tp} ranks")


def vocab_chunk(vocab_size: int, tp: int) -> int:
    return -(-vocab_size // tp)


def shard_slice(spec: TensorSpec, tp: int, rank: int) -> Slice:
    """The slice of the full tensor a tensor rank holds (vocab: clipped to the real rows;
    the rank pads it to ``vocab_chunk`` rows)."""
    size = spec.shape[spec.dim]
    if spec.split == "replicate" or tp == 1:
        return Slice(spec.dim, 0, size)
    if spec.split == "vocab":
        chunk = vocab_chunk(size, tp)
        return Slice(0, min(rank * chunk, size), min((rank + 1) * chunk, size))
    return Slice(spec.dim, *split_range(size, spec.unit, tp, rank))


def stages_holding(spec: TensorSpec, arch: ModelArchConfig, layout: ParallelLayout) -> set[int]:
    """Pipeline stages that hold ``spec``: a layer's stage; the token embedding on the first
    stage (and the last when tied to the LM head); other non-layer tensors on the first
    (positions, project_in) or last stage (final norm, project_out, LM head)."""
    last = layout.pp_size - 1
    if spec.layer is not None:
        return {layout.stage_of_layer(spec.layer, arch.num_layers)}
    if spec.name.endswith("embed_tokens.weight"):
        return {0, last} if arch.tie_word_embeddings else {0}
    if _FIRST_STAGE.search(spec.name):
        return {0}
    return {last}


def _classify(name: str, shape: tuple[int, ...], arch: ModelArchConfig) -> TensorSpec:
    match = _LAYER.search(name)
    layer = int(match.group(1)) if match else None
    if _COLUMN_HEADS.search(name):
        return TensorSpec(name, shape, "column", arch.head_dim, layer)
    if _COLUMN_ROWS.search(name):
        return TensorSpec(name, shape, "column", 1, layer)
    if _ROW_HEADS.search(name):
        return TensorSpec(name, shape, "row", arch.head_dim, layer)
    if _ROW_COLS.search(name):
        return TensorSpec(name, shape, "row", 1, layer)
    if _VOCAB.search(name) and layer is None:
        return TensorSpec(name, shape, "vocab", 1, layer)
    return TensorSpec(name, shape, "replicate", 1, layer)


def tensor_specs(arch: ModelArchConfig) -> dict[str, TensorSpec]:
    """Every checkpoint tensor of ``arch`` (HF names, as the model loads them), classified."""
    from ember.models.registry import get_model_class

    with torch.device("meta"):
        model = get_model_class(arch.architecture)(arch)
    shapes = {name: tuple(t.shape) for name, t in model.hf_state_dict().items()}
    return {name: _classify(name, shape, arch) for name, shape in shapes.items()}


def kv_specs(arch: ModelArchConfig) -> list[TensorSpec]:
    """One pseudo-tensor per layer for its KV cache: axis 0 = KV heads (K and V alike)."""
    return [TensorSpec(f"kv.{layer}", (arch.num_kv_heads,), "column", 1, layer) for layer in range(arch.num_layers)]


def local_sizes(arch: ModelArchConfig, tp: int, rank: int) -> dict[str, int]:
    """A tensor rank's head counts and widths."""
    kv_start, kv_stop = split_range(arch.num_kv_heads, 1, tp, rank)
    return {
        "num_heads": arch.num_heads // tp,
        "num_kv_heads": kv_stop - kv_start,
        "kv_head_start": kv_start,
        "intermediate_size": arch.intermediate_size // tp,
        "vocab_chunk": vocab_chunk(arch.vocab_size, tp),
    }
