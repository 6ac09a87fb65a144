"""Activation memory measured on any device: the peak bytes of tensors autograd saves for
backward (deduplicated by storage), seen through saved-tensor hooks.

NOTE: CPU tensors have no allocator statistics, so this is Ember's per-rank "activation
peak" on every device; parameters (FSDP's unsharded ones and TP's DTensors included) and
views of them are not activations and are skipped. Checkpointed layers
save through checkpoint's own hooks: what stays alive for them is their input, which
``CheckpointedLayer`` re-saves through the ordinary hooks so that it is counted.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor


class _Saved:
    __slots__ = ("key", "meter", "tensor")

    def __init__(self, meter: MemoryMeter, key, tensor: torch.Tensor):
        self.meter, self.key, self.tensor = meter, key, tensor

    def __del__(self):
        self.meter._release(self.key)


class MemoryMeter:
    def __init__(self):
        self.live_bytes = 0
        self.peak_bytes = 0
        self._storages: dict = {}  # key -> [references, nbytes]

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def reset_peak(self) -> None:
        self.peak_bytes = self.live_bytes

    def _pack(self, tensor: torch.Tensor):
        root = tensor._base if tensor._base is not None else tensor
        if isinstance(root, nn.Parameter):
            return tensor  # a parameter, or a view of one (a transposed weight)
        base = tensor._local_tensor if isinstance(tensor, DTensor) else tensor
        try:
            storage = base.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return tensor
        if storage.data_ptr() == 0 or storage.nbytes() == 0:
            return tensor
        key = (storage.data_ptr(), base.device.type)
        entry = self._storages.get(key)
        if entry is None:
            self._storages[key] = [1, storage.nbytes()]
            self.live_bytes += storage.nbytes()
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        else:
            entry[0] += 1
        return _Saved(self, key, tensor)

    @staticmethod
    def _unpack(packed):
        return packed.tensor if isinstance(packed, _Saved) else packed

    def _release(self, key) -> None:
        entry = self._storages.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            del self._storages[key]
            self.live_bytes -= entry[1]
