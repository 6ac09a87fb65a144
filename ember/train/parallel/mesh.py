"""The process groups and device meshes one plan needs (torchtitan's ``ParallelDims`` role).

Rank layout (``ember.planner.strategy``): ``rank = stage * n + local``, ``n`` devices per
stage; a layer with TP degree ``t`` sees its stage as a ``(dp = n / t, tp = t)`` mesh. Every
rank builds every group, in the same order (``new_group`` is collective over the world).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from ember.planner.strategy import Plan


def init_distributed(backend: str | None = None) -> None:
    """Join the process group that ``torchrun`` (or a test) described in the environment.

    NOTE: gloo on CPU, NCCL when CUDA is present; MASTER_ADDR should be 127.0.0.1 on one
    machine (the launcher's business, never hard-coded here).
    """
    if dist.is_initialized():
        return
    needed = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    missing = [k for k in needed if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"not launched as a distributed job: {', '.join(missing)} unset (use torchrun --nproc-per-node N ...)"
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)


class PlanMesh:
    """Meshes per TP degree, the pipeline group, the stage group, the groups that re-lay
    the batch out between TP degrees, and (tied embeddings under PP) the tie group."""

    def __init__(self, plan: Plan, *, tied_embeddings: bool = False, device_type: str = "cpu"):
        world = dist.get_world_size()
        if world != plan.num_devices:
            raise ValueError(f"the plan is for num_devices={plan.num_devices}, but {world} processes were started")
        self.plan = plan
        self.rank = dist.get_rank()
        self.world_size = world
        n = plan.devices_per_stage
        self.stage = self.rank // n
        self.local_rank = self.rank % n
        self.tp_degrees = sorted({1, *(s.tp for s in plan.layers)})
        grid = torch.arange(world)
        self.meshes = {
            t: DeviceMesh(device_type, grid.reshape(plan.pp, n // t, t), mesh_dim_names=("pp", "dp", "tp"))
            for t in self.tp_degrees
        }
        self.stage_group = self.meshes[1]["dp"].get_group()  # every rank of this stage
        self.pp_group = self.meshes[1]["pp"].get_group()  # same local rank, every stage
        self._relayout: dict[tuple[int, int], dist.ProcessGroup] = {}
        for small in self.tp_degrees:
            for big in self.tp_degrees:
                if small < big:
                    self._relayout[(small, big)] = self._build_relayout(small, big)
        self.tie_group = None
        if tied_embeddings and plan.pp > 1:
            for local in range(n):
                ranks = [local, (plan.pp - 1) * n + local]
                group = dist.new_group(ranks)
                if self.rank in ranks:
                    self.tie_group = group

    def _build_relayout(self, small: int, big: int) -> dist.ProcessGroup:
        """Groups of ``big // small`` ranks that hold different slices in the ``small``
        layout and the same batch in the ``big`` one, ordered by slice."""
        n, mine = self.plan.devices_per_stage, None
        for stage in range(self.plan.pp):
            for block in range(n // big):
                for offset in range(small):
                    ranks = [stage * n + block * big + j * small + offset for j in range(big // small)]
                    group = dist.new_group(ranks)
                    if self.rank in ranks:
                        mine = group
        assert mine is not None
        return mine

    def dp_tp_mesh(self, tp: int) -> DeviceMesh:
        """This stage's ``(dp, tp)`` mesh for a layer of TP degree ``tp``."""
        return self.meshes[tp]["dp", "tp"]

    def dp_mesh(self, tp: int) -> DeviceMesh:
        return self.meshes[tp]["dp"]

    def tp_mesh(self, tp: int) -> DeviceMesh:
        return self.meshes[tp]["tp"]

    def relayout_group(self, tp_a: int, tp_b: int) -> tuple[dist.ProcessGroup, int]:
        """The group that moves the batch between TP layouts ``tp_a`` and ``tp_b``, and this
        rank's slice index in it."""
        small, big = min(tp_a, tp_b), max(tp_a, tp_b)
        return self._relayout[(small, big)], (self.local_rank % big) // small
