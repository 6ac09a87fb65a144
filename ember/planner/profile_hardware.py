"""The ``hardware`` task of ``ember.planner.profile_worker``: collective times per group and
message size (every group of the job busy at once, as in training), compute/communication
overlap, the compute slowdown of k busy ranks, and what FSDP2, DDP and a pipeline slot add."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ember.planner.profile_timing import interleaved, progress, timed

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "p2p")


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
        progress(f"collectives over groups of {g}")
        g *= 2
    return {
        "world": world,
        "links": links,
        "overlap_slowdown": _overlap(repeats),
        "compute_slowdown": _compute_slowdown(repeats),
        "zero_overhead_s": _zero_overhead(spec),
        "ddp_overhead_s": _ddp_overhead(spec),
        "pipeline_s_per_micro_batch": _pipeline_overhead(repeats),
    }


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
        mesh = DeviceMesh("cpu", torch.arange(world).reshape(world // g, g), mesh_dim_names=("rep", "dp"))["dp"]
        steps = {}
        for kind in ("ddp", "zero2", "zero3"):
            model = build_model(shape, vocab_size=int(spec["vocab_size"]), bos_token_id=0, eos_token_id=0, seed=0)
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
        times = interleaved(steps, repeats)
        for kind in ("zero2", "zero3"):
            out[kind][g] = max(times[kind] - times["ddp"], 0.0) / depth
        progress(
            f"FSDP2 overhead per layer over groups of {g}: { {k: round(v[g] * 1e3, 2) for k, v in out.items()} } ms"
        )
        g *= 2
    return out


def _ddp_overhead(spec: dict, depth: int = 4) -> dict[int, float]:
    """Seconds per layer and step that data-parallel gradient sync (the runtime's
    ``GradSync``: async all-reduce per layer, overlapping backward) adds to a stack of
    ``depth`` of the model's layers, per data-parallel degree, every group busy at once."""
    from ember.train.config import ModelShape
    from ember.train.model_init import build_model
    from ember.train.parallel.sync import GradSync

    world, repeats = dist.get_world_size(), int(spec["repeats"])
    shape = ModelShape(**{**spec["shape"], "num_layers": depth})
    seq = int(spec["seq_len"])
    batch = min(max(int(b) for b in spec["batch_sizes"]), 4)
    model = build_model(shape, vocab_size=int(spec["vocab_size"]), bos_token_id=0, eos_token_id=0, seed=0)
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
        times = interleaved({"plain": lambda: step(None), "sync": lambda s=sync: step(s)}, repeats)
        sync.detach()
        out[g] = max(times["sync"] - times["plain"], 0.0) / depth
        progress(f"DDP sync per layer over groups of {g}: {out[g] * 1e3:.2f} ms")
        g *= 2
    return out


def _pipeline_overhead(repeats: int, num_micro_batches: int = 8) -> float:
    """Seconds per (stage, micro-batch) slot of a 1F1B pipeline over all ranks whose stages
    do almost nothing: scheduling, p2p latency and waiting."""
    from torch import nn
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B

    world, rank = dist.get_world_size(), dist.get_rank()
    stage = PipelineStage(nn.Linear(16, 16), rank, world, torch.device("cpu"))
    schedule = Schedule1F1B(
        stage, n_microbatches=num_micro_batches, scale_grads=False, loss_fn=lambda out, target: out.sum()
    )
    x = torch.randn(num_micro_batches, 16)

    def run():
        if rank == 0:
            schedule.step(x)
        elif rank == world - 1:
            schedule.step(target=x)
        else:
            schedule.step()

    seconds = timed(run, repeats)
    per_slot = seconds / (world + num_micro_batches - 1)
    progress(f"pipeline slot over {world} stages: {per_slot * 1e3:.2f} ms")
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

    return timed(fn, repeats)


def _busy(iterations: int = 20) -> None:
    a = torch.randn(160, 160)
    for _ in range(iterations):
        a = torch.tanh(a @ a)


def _overlap(repeats: int) -> float:
    """k in max(c, m) + (k - 1) min(c, m) for compute c and an all-reduce m issued together."""
    buf = torch.ones(256 * 1024)
    compute = timed(_busy, repeats)
    comm = timed(lambda: dist.all_reduce(buf), repeats)

    def both():
        work = dist.all_reduce(buf, async_op=True)
        _busy()
        work.wait()

    together = timed(both, repeats)
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
    times = interleaved({k: (lambda k=k: _busy() if rank < k else None) for k in counts}, 2 * repeats)
    return {k: times[k] / times[1] for k in counts}
