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
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "p2p")


def _timed(fn, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` (all ranks start together), slowest rank."""
    samples = []
    for i in range(warmup + repeats):
        dist.barrier()
        start = time.perf_counter()
        fn()
        if i >= warmup:
            samples.append(time.perf_counter() - start)
    return _slowest(statistics.median(samples))


def _slowest(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _interleaved(fns: dict, repeats: int, warmup: int = 2) -> dict:
    """Median seconds of each ``fns[k]()`` (slowest rank), timed in turns (one call of each
    per repeat) so that a burst of outside load hits every variant alike: what matters is
    their difference."""
    samples: dict = {k: [] for k in fns}
    for i in range(warmup + repeats):
        for key, fn in fns.items():
            dist.barrier()
            start = time.perf_counter()
            fn()
            if i >= warmup:
                samples[key].append(time.perf_counter() - start)
    return {k: _slowest(statistics.median(v)) for k, v in samples.items()}


def _fwd_bwd(fn, grad, repeats: int, warmup: int = 2) -> tuple[float, float]:
    fwd, bwd = [], []
    for i in range(warmup + repeats):
        dist.barrier()
        t0 = time.perf_counter()
        out = fn()
        t1 = time.perf_counter()
        out.backward(grad)
        t2 = time.perf_counter()
        if i >= warmup:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    return _slowest(statistics.median(fwd)), _slowest(statistics.median(bwd))


def measure_layer(spec: dict, depth: int = 2) -> dict:
    """Per-layer figures from a stack of ``depth`` layers (as in training: no barrier
    between layers), divided by ``depth``."""
    from torch.distributed.device_mesh import DeviceMesh

    from ember.train.config import ModelShape
    from ember.train.dist_layers import tensor_parallelize_layer
    from ember.train.dist_memory import MemoryMeter
    from ember.train.model_init import build_model

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
    out = {"tp": tp, "num_params": num_params, "num_replicated_params": replicated,
           "boundary_bytes_per_sample": seq * shape.hidden_size * 4,
           "batch": [], "forward_s": [], "backward_s": [], "activation_bytes": []}  # fmt: skip
    for batch in spec["batch_sizes"]:
        h = torch.randn(batch, seq, shape.hidden_size, requires_grad=True)
        grad = torch.randn(batch, seq, shape.hidden_size)

        def stack(h=h):
            x = h
            for layer in layers:
                x = layer(x, cos, sin, None, None)
            return x

        fwd, bwd = _fwd_bwd(stack, grad, repeats)
        meter = MemoryMeter()
        with meter.hooks():
            y = stack()
        saved = meter.live_bytes / depth
        del y
        out["batch"].append(batch)
        out["forward_s"].append(fwd / depth)
        out["backward_s"].append(bwd / depth)
        out["activation_bytes"].append(int(_slowest(saved)))
        _progress(f"layer tp={tp} batch={batch}: fwd {fwd / depth * 1e3:.2f} ms, "
                  f"bwd {bwd / depth * 1e3:.2f} ms")  # fmt: skip
    if tp == 1:
        out.update(_measure_ends(model, spec, repeats))
    return out


def _measure_ends(model, spec: dict, repeats: int) -> dict:
    """Embedding, final norm + head + loss, and AdamW per parameter (one rank)."""
    from ember.train.dist_memory import MemoryMeter

    seq, vocab = int(spec["seq_len"]), int(spec["vocab_size"])
    hidden = model.config.hidden_size
    embed, norm = model.model.embed_tokens, model.model.norm
    head = embed.weight if model.lm_head is None else model.lm_head.weight
    res = {"embed_params": embed.weight.numel(),
           "head_params": norm.weight.numel() + (0 if model.lm_head is None else head.numel()),
           "tied_embeddings": model.lm_head is None,
           "ends_batch": [], "embed_forward_s": [], "embed_backward_s": [],
           "head_forward_s": [], "head_backward_s": [], "head_activation_bytes": []}  # fmt: skip
    for batch in spec["batch_sizes"]:
        ids = torch.randint(0, vocab, (batch, seq))
        grad = torch.randn(batch, seq, hidden)
        e_fwd, e_bwd = _fwd_bwd(lambda ids=ids: embed(ids), grad, repeats)
        h = torch.randn(batch, seq, hidden, requires_grad=True)

        def head_loss(h=h, ids=ids):
            logits = F.linear(norm(h), head).float()
            return F.cross_entropy(logits.flatten(0, 1), ids.flatten())

        h_fwd, h_bwd = _fwd_bwd(head_loss, None, repeats)
        meter = MemoryMeter()
        with meter.hooks():
            loss = head_loss()
        saved = meter.live_bytes
        del loss
        for key, value in (("ends_batch", batch), ("embed_forward_s", e_fwd),
                           ("embed_backward_s", e_bwd), ("head_forward_s", h_fwd),
                           ("head_backward_s", h_bwd), ("head_activation_bytes", saved)):
            res[key].append(value)
        _progress(f"embedding + head batch={batch}")
    params = [p for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(params, lr=1e-3, foreach=True)
    step_s = _timed(opt.step, repeats)
    res["optimizer_s_per_param"] = step_s / sum(p.numel() for p in params)
    return res


def measure_hardware(spec: dict) -> dict:
    world, rank = dist.get_world_size(), dist.get_rank()
    repeats = int(spec["repeats"])
    sizes = [int(s) for s in spec["message_bytes"]]
    links: dict[str, dict[int, list]] = {k: {} for k in COLLECTIVES}
    g = 2
    while g <= world:
        groups = [dist.new_group(list(range(b, b + g))) for b in range(0, world, g)]
        group = groups[rank // g]
        for kind in COLLECTIVES:
            links[kind][g] = [[n, _time_collective(kind, group, g, n, repeats)] for n in sizes]
        _progress(f"collectives over groups of {g}")
        g *= 2
    return {"world": world, "links": links, "overlap_slowdown": _overlap(repeats),
            "compute_slowdown": _compute_slowdown(repeats),
            "zero_overhead_s": _zero_overhead(spec), "ddp_overhead_s": _ddp_overhead(spec),
            "pipeline_s_per_micro_batch": _pipeline_overhead(repeats)}  # fmt: skip


def _zero_overhead(spec: dict, depth: int = 4) -> dict[str, dict[int, float]]:
    """Seconds FSDP2 adds per layer to one micro-batch (forward + backward) over plain
    layers, per ZeRO kind and data-parallel degree: its collectives, hooks and copies, with
    FSDP's prefetching across a stack of ``depth`` layers, every group of the job busy at
    once, reductions as sums as in the runtime."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    from ember.train.config import ModelShape
    from ember.train.model_init import build_model

    world, repeats = dist.get_world_size(), int(spec["repeats"])
    shape = ModelShape(**{**spec["shape"], "num_layers": depth})
    seq = int(spec["seq_len"])
    batch = min(max(int(b) for b in spec["batch_sizes"]), 4)  # overheads barely depend on it
    out: dict[str, dict[int, float]] = {"zero2": {}, "zero3": {}}
    g = 2
    while g <= world:
        mesh = DeviceMesh("cpu", torch.arange(world).reshape(world // g, g),
                          mesh_dim_names=("rep", "dp"))["dp"]  # fmt: skip
        steps = {}
        for kind in ("ddp", "zero2", "zero3"):
            model = build_model(shape, vocab_size=int(spec["vocab_size"]), bos_token_id=0,
                                eos_token_id=0, seed=0)  # fmt: skip
            layers = list(model.decoder_layers)
            for layer in layers if kind != "ddp" else ():
                fully_shard(layer, mesh=mesh, reshard_after_forward=kind == "zero3")
                layer.set_gradient_divide_factor(1.0)
                layer.set_force_sum_reduction_for_comms(True)
            cos, sin = model.model.rotary_emb(torch.arange(seq)[None], torch.float32)
            h = torch.randn(batch, seq, shape.hidden_size, requires_grad=True)
            grad = torch.randn(batch, seq, shape.hidden_size)

            def step(layers=layers, cos=cos, sin=sin, h=h, grad=grad):
                x = h
                for layer in layers:
                    x = layer(x, cos, sin, None, None)
                x.backward(grad)

            steps[kind] = step
        times = _interleaved(steps, repeats)
        for kind in ("zero2", "zero3"):
            out[kind][g] = max(times[kind] - times["ddp"], 0.0) / depth
        _progress(f"FSDP2 overhead per layer over groups of {g}: "
                  f"{ {k: round(v[g] * 1e3, 2) for k, v in out.items()} } ms")  # fmt: skip
        g *= 2
    return out


def _ddp_overhead(spec: dict, depth: int = 4) -> dict[int, float]:
    """Seconds per layer and step that data-parallel gradient sync (the runtime's
    ``GradSync``: async all-reduce per layer, overlapping backward) adds to a stack of
    ``depth`` of the model's layers, per data-parallel degree, every group busy at once."""
    from ember.train.config import ModelShape
    from ember.train.dist_sync import GradSync
    from ember.train.model_init import build_model

    world, repeats = dist.get_world_size(), int(spec["repeats"])
    shape = ModelShape(**{**spec["shape"], "num_layers": depth})
    seq = int(spec["seq_len"])
    batch = min(max(int(b) for b in spec["batch_sizes"]), 4)
    model = build_model(shape, vocab_size=int(spec["vocab_size"]), bos_token_id=0,
                        eos_token_id=0, seed=0)  # fmt: skip
    layers = list(model.decoder_layers)
    cos, sin = model.model.rotary_emb(torch.arange(seq)[None], torch.float32)
    h = torch.randn(batch, seq, shape.hidden_size, requires_grad=True)
    grad = torch.randn(batch, seq, shape.hidden_size)

    def step(sync):
        if sync is not None:
            sync.start_step(1)
        x = h
        for layer in layers:
            x = layer(x, cos, sin, None, None)
        x.backward(grad)
        if sync is not None:
            sync.finish()
        for p in model.parameters():
            p.grad = None

    out, g = {}, 2
    while g <= world:
        group = [dist.new_group(list(range(b, b + g))) for b in range(0, world, g)]
        sync = GradSync()
        for layer in layers:
            sync.add_bucket(list(layer.parameters()), group[dist.get_rank() // g])
        times = _interleaved({"plain": lambda: step(None), "sync": lambda s=sync: step(s)},
                             repeats)  # fmt: skip
        sync.detach()
        out[g] = max(times["sync"] - times["plain"], 0.0) / depth
        _progress(f"DDP sync per layer over groups of {g}: {out[g] * 1e3:.2f} ms")
        g *= 2
    return out


def _pipeline_overhead(repeats: int, num_micro_batches: int = 8) -> float:
    """Seconds per (stage, micro-batch) slot of a 1F1B pipeline over all ranks whose stages
    do almost nothing: scheduling, p2p latency and waiting."""
    from torch import nn
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B

    world, rank = dist.get_world_size(), dist.get_rank()
    stage = PipelineStage(nn.Linear(16, 16), rank, world, torch.device("cpu"))
    schedule = Schedule1F1B(stage, n_microbatches=num_micro_batches, scale_grads=False,
                            loss_fn=lambda out, target: out.sum())  # fmt: skip
    x = torch.randn(num_micro_batches, 16)

    def run():
        if rank == 0:
            schedule.step(x)
        elif rank == world - 1:
            schedule.step(target=x)
        else:
            schedule.step()

    seconds = _timed(run, repeats)
    per_slot = seconds / (world + num_micro_batches - 1)
    _progress(f"pipeline slot over {world} stages: {per_slot * 1e3:.2f} ms")
    return per_slot


def _time_collective(kind: str, group, g: int, nbytes: int, repeats: int) -> float:
    """Seconds for one collective whose full buffer is ``nbytes`` (see LinkCost)."""
    numel = max(nbytes // 4 // g * g, g)
    full = torch.ones(numel)
    part = torch.ones(numel // g)
    me = dist.get_group_rank(group, dist.get_rank())
    if kind == "all_reduce":
        fn = lambda: dist.all_reduce(full, group=group)
    elif kind == "all_gather":
        fn = lambda: dist.all_gather_into_tensor(full, part, group=group)
    elif kind == "reduce_scatter":
        fn = lambda: dist.reduce_scatter_tensor(part, full, group=group)
    else:  # p2p: group-rank 0 <-> 1 (the others of the group idle), a send and its receive
        peer = dist.get_global_rank(group, 1 - me) if me < 2 else None

        def fn():
            if peer is None:
                return
            if me == 0:
                dist.send(full, peer)
            else:
                dist.recv(full, peer)

    return _timed(fn, repeats)


def _busy(iterations: int = 20) -> None:
    a = torch.randn(160, 160)
    for _ in range(iterations):
        a = torch.tanh(a @ a)


def _overlap(repeats: int) -> float:
    """k in max(c, m) + (k - 1) min(c, m) for compute c and an all-reduce m issued together."""
    buf = torch.ones(256 * 1024)
    compute = _timed(_busy, repeats)
    comm = _timed(lambda: dist.all_reduce(buf), repeats)

    def both():
        work = dist.all_reduce(buf, async_op=True)
        _busy()
        work.wait()

    together = _timed(both, repeats)
    k = 1.0 + (together - max(compute, comm)) / max(min(compute, comm), 1e-9)
    return min(max(k, 1.0), 2.0)


def _compute_slowdown(repeats: int) -> dict[int, float]:
    """Compute time when k ranks compute at once, over the time of one alone (timed in
    turns, so outside load hits every k alike)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    counts, k = [], 1
    while k <= world:
        counts.append(k)
        k *= 2
    times = _interleaved({k: (lambda k=k: _busy() if rank < k else None) for k in counts},
                         2 * repeats)  # fmt: skip
    return {k: times[k] / times[1] for k in counts}


def _progress(message: str) -> None:
    if dist.get_rank() == 0:
        print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ember.planner.profile_worker")
    parser.add_argument("--task", choices=("layer", "hardware"), required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    from ember.train.dist_mesh import init_distributed

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
    from ember.train.dist_mesh import exit_rank

    exit_rank(main())
