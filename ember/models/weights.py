"""The map between Hugging Face checkpoint names and a model's (partly fused) parameters."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ember.errors import ModelLoadError

# fused module name (suffix) -> its HF parts in row order, with each part's number of rows
FusedParts = Mapping[str, Sequence[tuple[str, int]]]


class HFWeightMap:
    """Every HF name a module expects, and the rows of which parameter it fills.

    Ember fuses q/k/v and gate/up into one Linear each; the HF names of the parts map to
    row ranges of the fused weight (and bias), so loading and saving stay name-compatible.
    """

    def __init__(self, module: nn.Module, fused: FusedParts):
        self._module = module
        # hf name -> (parameter name, first row, rows); rows None = the whole parameter
        self._slots: dict[str, tuple[str, int, int | None]] = {}
        for name, param in module.named_parameters():
            module_path, _, leaf = name.rpartition(".")
            key = next((f for f in fused if ("." + module_path).endswith("." + f)), None)
            if key is None:
                self._slots[name] = (name, 0, None)
                continue
            prefix = module_path[: len(module_path) - len(key)]
            start = 0
            for part, rows in fused[key]:
                self._slots[f"{prefix}{part}.{leaf}"] = (name, start, rows)
                start += rows
            assert start == param.shape[0], f"fused parts of {name} cover {start} rows"

    @property
    def hf_names(self) -> list[str]:
        return list(self._slots)

    def load(
        self,
        weights: Iterable[tuple[str, torch.Tensor]],
        *,
        rename: Callable[[str], str] = lambda name: name,
        skip: Callable[[str], bool] = lambda name: False,
    ) -> None:
        """Copy ``(hf_name, tensor)`` pairs into the parameters (casting to their dtype).

        Raises ModelLoadError on an unexpected name, a shape mismatch, or a missing weight.
        """
        params = dict(self._module.named_parameters())
        loaded: set[str] = set()
        for hf_name, tensor in weights:
            name = rename(hf_name)
            if skip(name):
                continue
            slot = self._slots.get(name)
            if slot is None:
                raise ModelLoadError(f"unexpected weight {hf_name!r} in checkpoint")
            param_name, start, rows = slot
            target = params[param_name].data
            if rows is not None:
                target = target.narrow(0, start, rows)
            if tuple(tensor.shape) != tuple(target.shape):
                raise ModelLoadError(
                    f"weight {hf_name!r} has shape {tuple(tensor.shape)}, the model expects {tuple(target.shape)}"
                )
            with torch.no_grad():
                target.copy_(tensor)
            loaded.add(name)
        missing = [name for name in self._slots if name not in loaded]
        if missing:
            shown = ", ".join(missing[:6]) + (", ..." if len(missing) > 6 else "")
            raise ModelLoadError(f"checkpoint is missing {len(missing)} weight(s): {shown}")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors under their HF names; fused parts are copies, the rest share storage."""
        params = dict(self._module.named_parameters())
        out = {}
        for hf_name, (param_name, start, rows) in self._slots.items():
            tensor = params[param_name].detach()
            # NOTE: parts are cloned because safetensors refuses tensors that share storage.
            out[hf_name] = tensor if rows is None else tensor.narrow(0, start, rows).clone()
        return out
