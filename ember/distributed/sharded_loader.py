"""Load one rank's shard of a checkpoint: only its stage's tensors, and of those only its
slice (``safe_open(...).get_slice(name)[...]``), so no rank ever reads the whole model."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ember.distributed.layout import ParallelLayout
from ember.distributed.shards import (
    TensorSpec,
    shard_slice,
    stages_holding,
    tensor_specs,
    vocab_chunk,
)
from ember.distributed.tp_layers import local_weight_map, shard_model
from ember.errors import ModelLoadError
from ember.models.config import ModelArchConfig, hf_architecture
from ember.models.loader import (
    LoadedModel,
    _read_json,
    _weight_files,
    resolve_checkpoint,
    resolve_dtype,
)
from ember.models.registry import get_model_class
from ember.models.tokenizer import load_tokenizer

_LAYER = re.compile(r"((?:^|\.)layers\.)(\d+)(\.)")


def load_checkpoint_info(model: str, *, dtype, device) -> tuple[LoadedModel, torch.dtype]:
    """Config, tokenizer and generation config of a checkpoint, without its weights (the
    engine process of a distributed instance holds none); ``module`` is None."""
    path = resolve_checkpoint(str(model))
    hf_config = _read_json(path / "config.json", required=True)
    try:
        get_model_class(hf_architecture(hf_config))
        config = ModelArchConfig.from_hf(hf_config)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    torch_dtype = resolve_dtype(dtype, config, torch.device(device))
    loaded = LoadedModel(
        module=None,  # type: ignore[arg-type]
        config=config,
        path=path,
        generation_config=_read_json(path / "generation_config.json", required=False),
        tokenizer=load_tokenizer(path),
    )
    return loaded, torch_dtype


def load_shard(
    path: Path,
    arch: ModelArchConfig,
    layout: ParallelLayout,
    rank: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
    group,
) -> nn.Module:
    coord = layout.coord(rank)
    with torch.device("meta"):
        module = get_model_class(arch.architecture)(arch)
    module = shard_model(module, arch, layout, coord, group)
    module = module.to(dtype=dtype).to_empty(device=device)
    specs = tensor_specs(arch)
    first_layer = layout.stage_layers(coord.pp, arch.num_layers).start
    weights = _shard_weights(_weight_files(path), specs, arch, layout, rank, first_layer)
    try:
        local_weight_map(module, arch, layout, coord).load(weights)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: rank {rank}: {exc}") from None
    return module.eval()


def _hf_name(name: str, arch: ModelArchConfig) -> str:
    if arch.architecture == "OPTForCausalLM" and name.startswith("decoder."):
        return "model." + name
    return name


def _shard_weights(
    files: list[Path],
    specs: dict[str, TensorSpec],
    arch: ModelArchConfig,
    layout: ParallelLayout,
    rank: int,
    first_layer: int,
) -> Iterator[tuple[str, torch.Tensor]]:
    coord = layout.coord(rank)
    for _file, name, read in _iter_readers(files):
        hf = _hf_name(name, arch)
        if "rotary_emb.inv_freq" in hf or (arch.tie_word_embeddings and hf == "lm_head.weight"):
            continue
        spec = specs.get(hf)
        if spec is None:
            raise ModelLoadError(f"unexpected weight {name!r} in checkpoint")
        if coord.pp not in stages_holding(spec, arch, layout):
            continue
        piece = shard_slice(spec, layout.tp_size, coord.tp)
        index = tuple([slice(None)] * piece.dim + [slice(piece.start, piece.stop)])
        tensor = read(index)
        if spec.split == "vocab":
            pad = vocab_chunk(spec.shape[0], layout.tp_size) - tensor.shape[0]
            tensor = F.pad(tensor, (0, 0, 0, pad)) if pad else tensor
        local = _LAYER.sub(lambda m: f"{m.group(1)}{int(m.group(2)) - first_layer}{m.group(3)}", hf, count=1)
        yield local, tensor


def _iter_readers(files: list[Path]):
    """(file, name, read(index) -> tensor) for every tensor; safetensors read only the slice."""
    from safetensors import SafetensorError, safe_open

    for file in files:
        if file.suffix == ".safetensors":
            try:
                with safe_open(str(file), framework="pt", device="cpu") as f:
                    for name in f.keys():
                        yield file, name, (lambda index, _n=name: f.get_slice(_n)[index])
            except (SafetensorError, OSError) as exc:
                raise ModelLoadError(f"{file.name}: corrupt or unreadable safetensors file: {exc}") from None
        else:
            # NOTE: .bin checkpoints cannot be read in slices; each rank loads the file once.
            state = torch.load(file, map_location="cpu", weights_only=True)
            for name, tensor in state.items():
                yield file, name, (lambda index, _t=tensor: _t[index])
