"""Load a Hugging Face checkpoint (local directory or hub id) into an Ember model."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ember.errors import InvalidInputError, ModelLoadError
from ember.models import hardware
from ember.models.config import ModelArchConfig, hf_architecture
from ember.models.registry import get_model_class
from ember.models.tokenizer import Tokenizer, load_tokenizer

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]


@dataclass
class LoadedModel:
    """A model ready to run (eval mode) and what came with its checkpoint."""

    module: nn.Module
    config: ModelArchConfig
    path: Path
    generation_config: dict[str, Any] = field(default_factory=dict)
    tokenizer: Tokenizer | None = None

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Ids that end generation: generation_config's (else config.json's) and the tokenizer's."""
        eos = self.generation_config.get("eos_token_id")
        if eos is None:
            eos = list(self.config.eos_token_ids)
        ids = list(eos) if isinstance(eos, list) else [eos]
        if self.tokenizer is not None:
            ids += [i for i in self.tokenizer.eos_token_ids if i not in ids]
        return tuple(ids)


def load_model(
    model: str | os.PathLike,
    *,
    dtype: torch.dtype | str = "float32",
    device: torch.device | str = "cpu",
) -> LoadedModel:
    """Load ``model`` (a checkpoint directory or a hub id such as ``"Qwen/Qwen3-0.6B"``).

    ``dtype``: float32/fp32, bfloat16/bf16, float16/fp16, a torch dtype, or "auto" (by the
    hardware: see ``resolve_auto_dtype``). Raises ModelLoadError naming the path and the
    problem.
    """
    path = resolve_checkpoint(str(model))
    hf_config = _read_json(path / "config.json", required=True)
    try:
        model_cls = get_model_class(hf_architecture(hf_config))
        config = ModelArchConfig.from_hf(hf_config)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    device = torch.device(device)
    torch_dtype = resolve_dtype(dtype, config, device)
    files = _weight_files(path)

    # NOTE: built on the meta device so parameters are allocated once, uninitialized, in the
    # target dtype; load_weights fails on any missing weight, so none stays uninitialized.
    with torch.device("meta"):
        module = model_cls(config)
    module = module.to(dtype=torch_dtype).to_empty(device=device)
    try:
        module.load_weights(_iter_weights(files))
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    module.eval()
    return LoadedModel(
        module=module,
        config=config,
        path=path,
        generation_config=_read_json(path / "generation_config.json", required=False),
        tokenizer=load_tokenizer(path),
    )


def resolve_dtype(dtype: torch.dtype | str, config: ModelArchConfig, device: torch.device) -> torch.dtype:
    """The torch dtype for ``dtype`` (a name, a torch dtype or "auto") on ``device``."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise InvalidInputError(f"unsupported dtype {dtype}", param="dtype")
        return dtype
    if dtype == "auto":
        return resolve_auto_dtype(config.torch_dtype, device)
    if dtype not in DTYPES:
        raise InvalidInputError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(DTYPES)}", param="dtype")
    return DTYPES[dtype]


def resolve_auto_dtype(checkpoint_dtype: str | None, device: torch.device | str) -> torch.dtype:
    """What ``dtype="auto"`` means (docs/engine.md, "dtype=auto").

    CPU: bfloat16 only where the CPU has native bf16 arithmetic (``cpu_has_native_bf16``),
    else float32, whatever the checkpoint says: emulated bf16 is 13-50x slower than fp32.
    CUDA: the checkpoint's torch_dtype when it is bf16/fp16 (bf16 only where the GPU has it
    natively, else fp16); float32 when it says float32 or nothing. Other devices: the
    checkpoint's torch_dtype, else float32.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return torch.bfloat16 if hardware.cpu_has_native_bf16() else torch.float32
    if checkpoint_dtype is None:
        return torch.float32
    wanted = DTYPES[checkpoint_dtype]
    if device.type == "cuda" and wanted == torch.bfloat16:
        # NOTE: including_emulation=False: pre-Ampere GPUs "support" bf16 only emulated (slow).
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return wanted


def resolve_checkpoint_dtype(
    model: str | os.PathLike, dtype: torch.dtype | str = "auto", device: torch.device | str = "cpu"
) -> torch.dtype:
    """The dtype ``load_model(model, dtype=dtype, device=device)`` would load in, from the
    checkpoint's config.json alone (benchmarks use it to report what "auto" chose)."""
    path = resolve_checkpoint(str(model))
    try:
        config = ModelArchConfig.from_hf(_read_json(path / "config.json", required=True))
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    return resolve_dtype(dtype, config, torch.device(device))


def resolve_checkpoint(model: str) -> Path:
    """A local checkpoint directory for ``model``, downloading a hub id if needed."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(f"{model}: not a directory (expected a checkpoint directory)")
    looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model
    if looks_local or not _HUB_ID.match(model):
        raise ModelLoadError(f"{model}: no such checkpoint directory")
    return _download(model)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    errors = []
    for local_only in (True, False):
        try:
            path = Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, local_files_only=local_only))
        except Exception as exc:  # hub errors have many types (offline, 404, auth, network)
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        if not any(path.glob("*.safetensors")):
            try:  # NOTE: .bin only when the repo has no safetensors, to avoid downloading both
                path = Path(
                    snapshot_download(
                        repo_id, allow_patterns=["*.bin", "*.bin.index.json"], local_files_only=local_only
                    )
                )
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
        return path
    raise ModelLoadError(
        f"{repo_id}: not a local directory, not in the Hugging Face cache, and the hub could "
        f"not be reached or has no such model ({errors[-1].splitlines()[0]})"
    )


def _read_json(file: Path, *, required: bool) -> dict[str, Any]:
    if not file.is_file():
        if required:
            raise ModelLoadError(f"{file.parent}: no {file.name} (not a Hugging Face checkpoint?)")
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{file}: invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def _weight_files(path: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_file = path / index_name
        if index_file.is_file():
            weight_map = _read_json(index_file, required=True).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ModelLoadError(f"{index_file}: no 'weight_map'")
            files = [path / name for name in sorted(set(weight_map.values()))]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise ModelLoadError(f"{path}: shard(s) listed in {index_name} are missing: {missing}")
            return files
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (path / single).is_file():
            return [path / single]
    # NOTE: Mistral repos also ship consolidated.safetensors in Mistral's own naming.
    files = sorted(f for f in path.glob("*.safetensors") if not f.name.startswith("consolidated"))
    files = files or sorted(path.glob("pytorch_model*.bin"))
    if not files:
        raise ModelLoadError(
            f"{path}: no weight files (model.safetensors, model-*.safetensors with "
            "model.safetensors.index.json, or pytorch_model*.bin)"
        )
    return files


def _iter_weights(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    for file in files:
        if file.suffix == ".safetensors":
            try:
                with safe_open(str(file), framework="pt", device="cpu") as f:
                    for name in f.keys():
                        yield name, f.get_tensor(name)
            except (SafetensorError, OSError) as exc:
                raise ModelLoadError(f"{file.name}: corrupt or unreadable safetensors file: {exc}") from None
        else:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True)
            except Exception as exc:  # unpickling errors come in many types
                raise ModelLoadError(f"{file.name}: cannot read weights: {exc}") from None
            if not isinstance(state, dict):
                kind = type(state).__name__
                raise ModelLoadError(f"{file.name}: expected a state dict, got {kind}")
            yield from state.items()
