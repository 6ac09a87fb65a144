"""Rank-side measurements of the profiler (``ember.planner.profiler`` launches this)::

    python -m ember.planner.profile_worker --task layer|hardware --spec spec.json --out out.json

``layer``: one decoder layer, TP-sharded over all ranks of the job (the runtime's own
module), forward and backward seconds and saved-activation bytes per batch size; with one
rank also the embedding, the head + loss and the optimizer. ``hardware``: all-reduce,
all-gather, reduce-scatter and p2p seconds per group size and message size (every group
of the job busy at once, as in training), compute/communication overlap, and how compute
slows when k ranks compute at once. Every time is the median over repeats of the slowest
rank. Rank 0 writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ember.planner.profile_hardware import measure_hardware
from ember.planner.profile_timing import fwd_bwd, progress, slowest, timed


def measure_layer(spec: dict, depth: int = 2) -> dict:
    """Per-layer figures from a stack of ``depth`` layers (as in training: no barrier
    between layers), divided by ``depth``."""
    from torch.distributed.device_mesh import DeviceMesh

    from ember.train.config import ModelShape
    from ember.train.model_init import build_model
    from ember.train.parallel.layers import tensor_parallelize_layer
    from ember.train.parallel.memory import MemoryMeter

    tp = dist.get_world_size()
    shape = ModelShape(**{**spec["shape"], "num_layers": depth})
    seq, vocab, repeats = int(spec["seq_len"]), int(spec["vocab_size"]), int(spec["repeats"])
    model = build_model(shape, vocab_size=vocab, bos_token_id=0, eos_token_id=0, seed=0)
    layers = list(model.decoder_layers)
    num_params = sum(p.numel() for p in layers[0].parameters())
    replicated = sum(p.numel() for n, p in layers[0].named_parameters() if "norm" in n)
    if tp > 1:
        mesh = DeviceMesh("cpu", torch.arange(tp))
        for layer in layers:
            tensor_parallelize_layer(layer, mesh)
    cos, sin = model.model.rotary_emb(torch.arange(seq)[None], torch.float32)
    out = {
        "tp": tp,
        "num_params": num_params,
        "num_replicated_params": replicated,
        "boundary_bytes_per_sample": seq * shape.hidden_size * 4,
        "batch": [],
        "forward_s": [],
        "backward_s": [],
        "activation_bytes": [],
    }
    for batch in spec["batch_sizes"]:
        h = torch.randn(batch, seq, shape.hidden_size, requires_grad=True)
        grad = torch.randn(batch, seq, shape.hidden_size)

        def stack(h=h):
            x = h
            for layer in layers:
                x = layer(x, cos, sin, None, None)
            return x

        fwd, bwd = fwd_bwd(stack, grad, repeats)
        meter = MemoryMeter()
        with meter.hooks():
            y = stack()
        saved = meter.live_bytes / depth
        del y
        out["batch"].append(batch)
        out["forward_s"].append(fwd / depth)
        out["backward_s"].append(bwd / depth)
        out["activation_bytes"].append(int(slowest(saved)))
        progress(f"layer tp={tp} batch={batch}: fwd {fwd / depth * 1e3:.2f} ms, bwd {bwd / depth * 1e3:.2f} ms")
    if tp == 1:
        out.update(_measure_ends(model, spec, repeats))
    return out


def _measure_ends(model, spec: dict, repeats: int) -> dict:
    """Embedding, final norm + head + loss, and AdamW per parameter (one rank)."""
    from ember.train.parallel.memory import MemoryMeter

    seq, vocab = int(spec["seq_len"]), int(spec["vocab_size"])
    hidden = model.config.hidden_size
    embed, norm = model.model.embed_tokens, model.model.norm
    head = embed.weight if model.lm_head is None else model.lm_head.weight
    res = {
        "embed_params": embed.weight.numel(),
        "head_params": norm.weight.numel() + (0 if model.lm_head is None else head.numel()),
        "tied_embeddings": model.lm_head is None,
        "ends_batch": [],
        "embed_forward_s": [],
        "embed_backward_s": [],
        "head_forward_s": [],
        "head_backward_s": [],
        "head_activation_bytes": [],
    }
    for batch in spec["batch_sizes"]:
        ids = torch.randint(0, vocab, (batch, seq))
        grad = torch.randn(batch, seq, hidden)
        e_fwd, e_bwd = fwd_bwd(lambda ids=ids: embed(ids), grad, repeats)
        h = torch.randn(batch, seq, hidden, requires_grad=True)

        def head_loss(h=h, ids=ids):
            logits = F.linear(norm(h), head).float()
            return F.cross_entropy(logits.flatten(0, 1), ids.flatten())

        h_fwd, h_bwd = fwd_bwd(head_loss, None, repeats)
        meter = MemoryMeter()
        with meter.hooks():
            loss = head_loss()
        saved = meter.live_bytes
        del loss
        for key, value in (
            ("ends_batch", batch),
            ("embed_forward_s", e_fwd),
            ("embed_backward_s", e_bwd),
            ("head_forward_s", h_fwd),
            ("head_backward_s", h_bwd),
            ("head_activation_bytes", saved),
        ):
            res[key].append(value)
        progress(f"embedding + head batch={batch}")
    params = [p for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(params, lr=1e-3, foreach=True)
    step_s = timed(opt.step, repeats)
    res["optimizer_s_per_param"] = step_s / sum(p.numel() for p in params)
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ember.planner.profile_worker")
    parser.add_argument("--task", choices=("layer", "hardware"), required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    from ember.train.parallel.mesh import init_distributed

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    init_distributed()
    try:
        spec = json.loads(Path(args.spec).read_text())
        result = measure_layer(spec) if args.task == "layer" else measure_hardware(spec)
        if dist.get_rank() == 0:
            Path(args.out).write_text(json.dumps(result) + "\n")
        dist.barrier()  # leave together: a rank that tears down early aborts a busy peer
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    from ember.distributed.process import exit_rank

    exit_rank(main())
