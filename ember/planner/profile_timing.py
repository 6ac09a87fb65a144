"""Timing on every rank of a profiling job: each figure is the median over repeats of the
slowest rank (``ember.planner.profile_worker``)."""

from __future__ import annotations

import statistics
import sys
import time

import torch
import torch.distributed as dist


def timed(fn, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` (all ranks start together), slowest rank."""
    samples = []
    for i in range(warmup + repeats):
        dist.barrier()
        start = time.perf_counter()
        fn()
        if i >= warmup:
            samples.append(time.perf_counter() - start)
    return slowest(statistics.median(samples))


def slowest(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def interleaved(fns: dict, repeats: int, warmup: int = 2) -> dict:
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
    return {k: slowest(statistics.median(v)) for k, v in samples.items()}


def fwd_bwd(fn, grad, repeats: int, warmup: int = 2) -> tuple[float, float]:
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
    return slowest(statistics.median(fwd)), slowest(statistics.median(bwd))


def progress(message: str) -> None:
    if dist.get_rank() == 0:
        print(message, file=sys.stderr, flush=True)
