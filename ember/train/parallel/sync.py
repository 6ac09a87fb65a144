"""Data-parallel gradient sums for parameters FSDP does not own, and the global gradient
norm of a hybrid-parallel model.

Gradients are sums, never means: each rank's loss is already divided by the number of
samples of the whole step, so summing over data-parallel replicas gives the gradient of the
mean loss whatever the TP degree of a layer (a TP group's replicas carry the same samples).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Replicate


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's storage of ``t`` (in-place ops on it change the DTensor)."""
    return t._local_tensor if isinstance(t, DTensor) else t


class GradSync:
    """DDP for chosen parameter groups: one flat bucket per group, all-reduced (SUM)
    asynchronously as soon as the step's last micro-batch has produced all its gradients,
    so the reduction overlaps the rest of backward; ``finish`` waits and writes back."""

    def __init__(self):
        self._buckets: list[dict] = []
        self._ties: list[tuple[nn.Parameter, dist.ProcessGroup]] = []
        self._expected = 1

    def add_bucket(self, params: list[nn.Parameter], group: dist.ProcessGroup | None) -> None:
        """``group`` None (a data-parallel degree of one) = nothing to reduce."""
        if group is None or dist.get_world_size(group) == 1 or not params:
            return
        bucket = {"params": params, "group": group, "count": 0, "work": None, "flat": None, "hooks": []}
        for p in params:
            hook = p.register_post_accumulate_grad_hook(lambda _p, b=bucket: self._on_grad(b))
            bucket["hooks"].append(hook)
        self._buckets.append(bucket)

    def detach(self) -> None:
        """Remove the gradient hooks (the parameters stop being synced)."""
        for bucket in self._buckets:
            for hook in bucket["hooks"]:
                hook.remove()
        self._buckets = []

    def add_tie(self, param: nn.Parameter, group: dist.ProcessGroup) -> None:
        """``param`` is one copy of a weight shared across stages; sum its gradient with the
        other copy's (after the in-stage reduction)."""
        self._ties.append((param, group))

    def start_step(self, num_micro_batches: int) -> None:
        self._expected = num_micro_batches
        for bucket in self._buckets:
            bucket.update(count=0, work=None, flat=None)

    def _on_grad(self, bucket: dict) -> None:
        bucket["count"] += 1
        if bucket["count"] == len(bucket["params"]) * self._expected:
            self._launch(bucket)

    def _launch(self, bucket: dict) -> None:
        grads = [local(p.grad) for p in bucket["params"]]
        flat = torch.cat([g.reshape(-1) for g in grads])
        bucket["flat"] = flat
        bucket["work"] = dist.all_reduce(flat, group=bucket["group"], async_op=True)

    def finish(self) -> None:
        for bucket in self._buckets:
            if bucket["work"] is None:  # a parameter without a gradient this step
                for p in bucket["params"]:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                self._launch(bucket)
        for bucket in self._buckets:
            bucket["work"].wait()
            offset = 0
            for p in bucket["params"]:
                g = local(p.grad)
                g.copy_(bucket["flat"][offset : offset + g.numel()].view_as(g))
                offset += g.numel()
            bucket["flat"] = bucket["work"] = None
        for param, group in self._ties:
            dist.all_reduce(local(param.grad), group=group)


def replication(param: torch.Tensor, devices_per_stage: int) -> int:
    """How many ranks hold an identical copy of this rank's part of ``param``: the stage's
    ranks outside its mesh, times the mesh dims it is replicated over."""
    if not isinstance(param, DTensor):
        return devices_per_stage
    mesh = param.device_mesh
    copies = devices_per_stage // mesh.size()
    for dim, placement in enumerate(param.placements):
        if isinstance(placement, Replicate):
            copies *= mesh.size(dim)
    return copies


def clip_grad_norm(params: list[tuple[nn.Parameter, int]], max_norm: float) -> float:
    """Clip by the global norm over all ranks; ``params`` = (parameter, copies of it in the
    world). Returns the norm before clipping (like ``torch.nn.utils.clip_grad_norm_``)."""
    total = torch.zeros((), dtype=torch.float64)
    for p, copies in params:
        if p.grad is not None:
            total += local(p.grad).double().pow(2).sum() / copies
    dist.all_reduce(total)
    norm = math.sqrt(float(total))
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for p, _ in params:
            if p.grad is not None:
                local(p.grad).mul_(coef)
    return norm
