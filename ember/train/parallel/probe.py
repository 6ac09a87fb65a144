"""Train a model shape on synthetic tokens under a plan for a few steps and report losses,
step times and memory per rank: what tests, ``ember bench plan`` and the cost-model check
run. One process per rank (``launch_local`` starts them on this machine, or torchrun)::

    python -m ember.train.parallel.probe --jobs jobs.json --out results.json

``jobs.json``: a list of ``{"plan": <plan JSON>, "spec": {"shape": ModelShape fields,
"vocab_size", "seq_len", "steps", "seed", "lr", "precision"}}``, run one after another in
the same processes. Rank 0 writes a list with, per job: ``losses``, ``grad_norms``,
``step_s`` (per step, the slowest rank) and ``ranks`` (per rank: stage, state and
activation-peak bytes, max RSS, step times).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ember.distributed.process import exit_rank, free_port
from ember.planner.strategy import Plan
from ember.train.config import ModelShape, TrainConfig


def synthetic_tokens(vocab_size: int, num_tokens: int, seed: int) -> np.ndarray:
    """A learnable stream: mostly ``next = (3 * prev + 1) % V``, one token in eight random."""
    rng = np.random.default_rng(seed)
    out = np.empty(num_tokens, dtype=np.uint16)
    prev = 0
    noise = rng.integers(0, vocab_size, num_tokens)
    is_noise = rng.random(num_tokens) < 0.125
    for i in range(num_tokens):
        prev = int(noise[i]) if is_noise[i] else (3 * prev + 1) % vocab_size
        out[i] = prev
    return out


def spec_config(spec: dict, *, batch_size: int, grad_accum: int) -> TrainConfig:
    steps = int(spec["steps"])
    return TrainConfig(
        seq_len=int(spec["seq_len"]),
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_steps=max(steps, 2),
        warmup_steps=1,
        lr=float(spec.get("lr", 3e-3)),
        precision=spec.get("precision", "fp32"),
        seed=int(spec.get("seed", 0)),
        vocab_size=int(spec["vocab_size"]),
        eval_interval=0,
        checkpoint_interval=0,
    )


def build_probe(spec: dict, *, batch_size: int, grad_accum: int):
    """(model, config, batches) of ``spec``: same weights and data on every rank."""
    from ember.train.data import TrainBatches
    from ember.train.model_init import build_model

    config = spec_config(spec, batch_size=batch_size, grad_accum=grad_accum)
    shape = ModelShape(**spec["shape"])
    model = build_model(shape, vocab_size=config.vocab_size, bos_token_id=0, eos_token_id=0, seed=config.seed)
    num_tokens = (config.seq_len + 1) * batch_size * grad_accum * (int(spec["steps"]) + 1)
    tokens = synthetic_tokens(config.vocab_size, num_tokens, config.seed)
    batches = TrainBatches(tokens, seq_len=config.seq_len, batch_size=batch_size, seed=config.seed)
    return model, config, batches


def reference_run(spec: dict, *, batch_size: int, grad_accum: int) -> dict:
    """The same training in one process with ``ember.train.trainer.Trainer``."""
    from ember.train.trainer import Trainer

    model, config, batches = build_probe(spec, batch_size=batch_size, grad_accum=grad_accum)
    trainer = Trainer(model, config, batches, [])
    results = [trainer.train_step() for _ in range(int(spec["steps"]))]
    return {
        "losses": [r.loss for r in results],
        "grad_norms": [r.grad_norm for r in results],
        "step_s": [r.seconds for r in results],
    }


def run_rank(plan: Plan, spec: dict) -> dict | None:
    """This rank's part of the probe; rank 0 returns the gathered result."""
    from ember.train.parallel.memory import MemoryMeter
    from ember.train.parallel.mesh import PlanMesh
    from ember.train.parallel.trainer import DistTrainer
    from ember.train.parallelize import parallelize

    model, config, batches = build_probe(spec, batch_size=plan.micro_batch_size, grad_accum=plan.num_micro_batches)
    mesh = PlanMesh(plan, tied_embeddings=model.lm_head is None)
    meter = MemoryMeter()
    autocast = torch.bfloat16 if config.precision == "bf16" else None
    parallel = parallelize(model, plan, mesh, autocast_dtype=autocast, meter=meter)
    del model
    trainer = DistTrainer(parallel, config, batches, meter=meter)
    steps = [trainer.train_step() for _ in range(int(spec["steps"]))]
    mine = {
        "rank": mesh.rank,
        "stage": mesh.stage,
        "state_bytes": trainer.peak_state_bytes,
        "activation_peak_bytes": meter.peak_bytes,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "step_s": [r.seconds for r in steps],
    }
    gathered = [None] * mesh.world_size
    dist.all_gather_object(gathered, mine)
    if mesh.rank != 0:
        return None
    return {
        "plan": plan.describe(),
        "losses": [r.loss for r in steps],
        "grad_norms": [r.grad_norm for r in steps],
        "step_s": [max(g["step_s"][i] for g in gathered) for i in range(len(steps))],
        "ranks": gathered,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ember.train.parallel.probe")
    parser.add_argument("--jobs", required=True, help="JSON list of {plan, spec}")
    parser.add_argument("--out", required=True, help="where rank 0 writes the results")
    args = parser.parse_args(argv)
    from ember.train.parallel.mesh import init_distributed

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    init_distributed()
    try:
        results = []
        for job in json.loads(Path(args.jobs).read_text()):
            results.append(run_rank(Plan.from_dict(job["plan"]), job["spec"]))
            dist.barrier()
        if dist.get_rank() == 0:
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    finally:
        dist.destroy_process_group()
    return 0


def run_jobs(jobs: list[tuple[Plan, dict]], *, folder: Path, timeout_s: float = 600) -> list[dict]:
    """Launch the ranks on this machine for ``jobs`` (all with the same device count) and
    return rank 0's results."""
    num = {plan.num_devices for plan, _ in jobs}
    if len(num) != 1:
        raise ValueError(f"jobs need one device count, got {sorted(num)}")
    folder.mkdir(parents=True, exist_ok=True)
    jobs_file, out_file = folder / "jobs.json", folder / "results.json"
    jobs_file.write_text(json.dumps([{"plan": p.to_dict(), "spec": s} for p, s in jobs]))
    launch_local(
        ["ember.train.parallel.probe", "--jobs", str(jobs_file), "--out", str(out_file)], num.pop(), timeout_s=timeout_s
    )
    return json.loads(out_file.read_text())


def launch_local(module_args: list[str], num_procs: int, *, timeout_s: float = 600, threads: int = 1) -> list[str]:
    """Run ``python -m <module_args>`` as ``num_procs`` ranks on 127.0.0.1 (what torchrun
    does on one machine, without its agent); returns each rank's output. If a rank fails or
    the time runs out, the others are stopped and RuntimeError carries the failing output."""
    import tempfile
    import time

    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(num_procs),
        "OMP_NUM_THREADS": str(threads),
    }
    with tempfile.TemporaryDirectory(prefix="ember-ranks-") as tmp:
        logs = [Path(tmp) / f"rank{r}.log" for r in range(num_procs)]
        procs = []
        for rank, log in enumerate(logs):
            rank_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            with log.open("w") as f:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", *module_args], env=rank_env, stdout=f, stderr=subprocess.STDOUT
                    )
                )
        deadline = time.monotonic() + timeout_s
        failed = None
        try:
            while any(p.poll() is None for p in procs):
                failed = next((r for r, p in enumerate(procs) if p.poll() not in (None, 0)), None)
                if failed is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
        outputs = [log.read_text(errors="replace") for log in logs]
    if failed is None:
        failed = next((r for r, p in enumerate(procs) if p.returncode != 0), None)
    if failed is not None:
        code = procs[failed].returncode
        raise RuntimeError(f"rank {failed} exited with {code}:\n{outputs[failed][-4000:]}")
    return outputs


if __name__ == "__main__":
    exit_rank(main())
