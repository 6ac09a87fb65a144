"""``ember train --plan plan.json`` under torchrun: a recipe trained by the hybrid-parallel
runtime, every rank logging its throughput and memory.

    torchrun --nproc-per-node 4 --master-addr 127.0.0.1 -m ember.train \\
        --recipe ember-debug --plan plan.json --out runs/debug-4 --max-steps 20

The plan's micro-batch size and count replace the recipe's ``batch_size``/``grad_accum``.
Writes ``<out>/recipe.json``, ``<out>/plan.json``, ``<out>/metrics.jsonl`` (rank 0) and
``<out>/ranks/rank-<r>.json`` (tokens/s, peak state and activation bytes, max RSS), and a
per-rank shard of the final state under ``<out>/checkpoints/step-<N>/rank-<r>.pt``.
Validation, resuming and the Hugging Face export are single-process features for now.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

import torch
import torch.distributed as dist

from ember.errors import InvalidInputError
from ember.planner.strategy import Plan
from ember.train.config import Recipe


def run_planned(recipe: Recipe, options, plan_path: Path):
    """Train ``recipe`` on this rank of ``plan_path``'s plan; returns ``fit``'s result."""
    from ember.train.data import TrainBatches
    from ember.train.loop import fit
    from ember.train.model_init import build_model
    from ember.train.parallel.memory import MemoryMeter
    from ember.train.parallel.mesh import PlanMesh, init_distributed
    from ember.train.parallel.trainer import DistTrainer
    from ember.train.parallelize import parallelize
    from ember.train.run import prepare_data, with_overrides

    try:
        plan = Plan.load(plan_path)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"--plan {plan_path}: {exc}") from None
    if options.resume or options.max_minutes is not None or options.distill_from is not None:
        raise InvalidInputError("--plan runs do not support --resume, --max-minutes or --distill-from yet")
    recipe = with_overrides(recipe, {"batch_size": plan.micro_batch_size, "grad_accum": plan.num_micro_batches})
    try:
        init_distributed()
    except RuntimeError as exc:
        raise InvalidInputError(str(exc)) from None
    rank = dist.get_rank()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    # NOTE: rank 0 builds the tokenizer and token cache first; the others then read them.
    if rank == 0:
        data = prepare_data(recipe, options)
    dist.barrier()
    if rank != 0:
        data = prepare_data(recipe, options)
    config = recipe.train
    model = build_model(
        recipe.model,
        vocab_size=data.vocab_size,
        bos_token_id=data.eos_token_id,
        eos_token_id=data.eos_token_id,
        seed=config.seed,
    )
    try:
        mesh = PlanMesh(plan, tied_embeddings=model.lm_head is None)
        meter = MemoryMeter()
        autocast = torch.bfloat16 if config.precision == "bf16" else None
        parallel = parallelize(model, plan, mesh, autocast_dtype=autocast, meter=meter)
    except ValueError as exc:
        raise InvalidInputError(f"--plan {plan_path}: {exc}") from None
    batches = TrainBatches(data.tokens["train"], seq_len=config.seq_len, batch_size=config.batch_size, seed=config.seed)
    trainer = DistTrainer(parallel, config, batches, meter=meter)
    out = options.out_dir
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2) + "\n")
        plan.save(out / "plan.json")
    dist.barrier()

    def save() -> Path:
        folder = out / "checkpoints" / f"step-{trainer.step}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"rank-{rank}.pt"
        state = {
            "plan": plan.to_dict(),
            "step": trainer.step,
            "model": {k: _local(v) for k, v in trainer.model.state_dict().items()},
        }
        torch.save(state, path)
        return path

    result = fit(
        trainer,
        save=save,
        metrics_file=out / "metrics.jsonl" if rank == 0 else None,
        stop_at_step=options.stop_at_step,
        progress=options.progress and rank == 0,
    )
    report = {
        "rank": rank,
        "stage": mesh.stage,
        "local_rank": mesh.local_rank,
        "tokens_per_s": trainer.tokens_seen / max(trainer.elapsed_s, 1e-9),
        "peak_state_bytes": trainer.peak_state_bytes,
        "peak_activation_bytes": meter.peak_bytes,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    (out / "ranks").mkdir(parents=True, exist_ok=True)
    (out / "ranks" / f"rank-{rank}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"rank {rank} (stage {mesh.stage}): {report['tokens_per_s']:.0f} tokens/s, peak "
        f"states {report['peak_state_bytes'] / 2**20:.1f} MiB + activations "
        f"{report['peak_activation_bytes'] / 2**20:.1f} MiB, max RSS "
        f"{report['max_rss_bytes'] / 2**20:.0f} MiB",
        flush=True,
    )
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        print(
            f"{recipe.name}: stopped ({result.stop_reason}) at step {result.step} under "
            f"plan {plan_path}; per-rank reports in {out / 'ranks'}"
        )
    return result


def _local(value):
    from torch.distributed.tensor import DTensor

    return value.to_local() if isinstance(value, DTensor) else value
