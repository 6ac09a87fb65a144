"""Apply a plan (``ember.planner.strategy.Plan``) to an Ember Llama on this rank.

Order (each step sees the modules the previous one produced; torchtitan's order):

1. pipeline split: keep this stage's decoder layers, plus the embedding (first stage) and
   the final norm + LM head (last stage; a tied head gets its own copy when pp > 1);
2. tensor parallelism per layer with tp > 1 (``tensor_parallelize_layer``);
3. activation checkpointing per layer (``CheckpointedLayer``);
4. FSDP2 ``fully_shard`` per ZeRO layer over the layer's data-parallel mesh (ZeRO-3:
   ``reshard_after_forward=True``; ZeRO-2: ``False``), reductions as sums;
5. DDP gradient buckets (``GradSync``) for every other parameter: per layer over its
   data-parallel group, embedding and head over the stage.

The planner never touches modules; only this runtime does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.fsdp import fully_shard

from ember.planner.strategy import Plan
from ember.train.parallel.layers import (
    CheckpointedLayer,
    tensor_parallelize_layer,
    tp_limit,
)
from ember.train.parallel.mesh import PlanMesh
from ember.train.parallel.stage import StageModule
from ember.train.parallel.sync import GradSync, replication


@dataclass
class ParallelModel:
    """This rank's part of the model and what the trainer needs to step it."""

    stage: StageModule
    mesh: PlanMesh
    grad_sync: GradSync
    params: list[tuple[nn.Parameter, int]]  # (parameter, identical copies in the world)

    @property
    def plan(self) -> Plan:
        return self.mesh.plan


def check_plan_fits(plan: Plan, model: nn.Module) -> None:
    """Raise ValueError if ``plan`` cannot run ``model`` (layer count, TP degrees)."""
    attn = model.decoder_layers[0].self_attn
    inter = model.decoder_layers[0].mlp.down_proj.in_features
    plan.check_model(num_layers=len(model.decoder_layers), tp_limit=tp_limit(attn.num_heads, attn.num_kv_heads, inter))


def parallelize(model: nn.Module, plan: Plan, mesh: PlanMesh, *, autocast_dtype=None, meter=None) -> ParallelModel:
    """Carve and wrap ``model`` (a full ``LlamaForCausalLM``, same weights on every rank)
    for this rank of ``plan``. The unused parts of ``model`` are dropped."""
    check_plan_fits(plan, model)
    stage, pp = mesh.stage, plan.pp
    is_first, is_last = stage == 0, stage == pp - 1
    indices = list(plan.stage_range(stage))
    strategies = [plan.layers[i] for i in indices]
    tied = model.lm_head is None
    embed = model.model.embed_tokens if is_first else None
    head = None
    if is_last and not tied:
        head = model.lm_head.weight
    elif is_last and tied and pp > 1:
        head = nn.Parameter(model.model.embed_tokens.weight.detach().clone())

    # 1-3: pipeline split, tensor parallelism, checkpointing
    layers = []
    for i, s in zip(indices, strategies):
        layer = model.decoder_layers[i]
        if s.tp > 1:
            tensor_parallelize_layer(layer, mesh.tp_mesh(s.tp))
        layers.append(CheckpointedLayer(layer) if s.checkpoint else layer)

    # 4: FSDP2 for ZeRO layers
    grad_sync = GradSync()
    for layer, s in zip(layers, strategies):
        dp = plan.devices_per_stage // s.tp
        if s.dp_type != "ddp" and dp > 1:
            mesh_dp = mesh.dp_tp_mesh(s.tp)["dp"] if s.tp > 1 else mesh.dp_mesh(1)
            fully_shard(layer, mesh=mesh_dp, reshard_after_forward=s.dp_type == "zero3")
            # NOTE: sums, not means (see ember.train.parallel.sync); gloo has no pre-scaled sum.
            layer.set_gradient_divide_factor(1.0)
            layer.set_force_sum_reduction_for_comms(True)
        elif dp > 1:
            # 5: DDP for the rest
            grad_sync.add_bucket(list(layer.parameters()), mesh.dp_mesh(s.tp).get_group())

    stage_module = StageModule(
        mesh=mesh,
        layers=layers,
        layer_tps=[s.tp for s in strategies],
        rotary=model.model.rotary_emb,
        embed=embed,
        norm=model.model.norm if is_last else None,
        head=head,
        autocast_dtype=autocast_dtype,
        meter=meter,
    )
    outer = [p for name, p in stage_module.named_parameters() if not name.startswith("layers.")]
    grad_sync.add_bucket(outer, mesh.stage_group if plan.devices_per_stage > 1 else None)
    tie_copy = None
    if tied and pp > 1 and (is_first or is_last):
        tie_copy = embed.weight if is_first else head
        grad_sync.add_tie(tie_copy, mesh.tie_group)
    params = []
    for p in stage_module.parameters():
        copies = replication(p, plan.devices_per_stage)
        if p is tie_copy:
            copies *= 2
        params.append((p, copies))
    return ParallelModel(stage_module, mesh, grad_sync, params)


def build_optimizer(parallel: ParallelModel, config) -> torch.optim.AdamW:
    """AdamW as in ``ember.train.optim`` (decay on matrices), one param group per
    (decay, device mesh): foreach kernels need the DTensors of one group on one mesh."""
    groups: dict[tuple, list] = {}
    for p in parallel.stage.parameters():
        mesh = getattr(p, "device_mesh", None)
        key = (p.dim() >= 2, None if mesh is None else id(mesh))
        groups.setdefault(key, []).append(p)
    param_groups = [
        {"params": ps, "weight_decay": config.weight_decay if decay else 0.0} for (decay, _), ps in groups.items()
    ]
    return torch.optim.AdamW(param_groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=1e-8, foreach=True)
