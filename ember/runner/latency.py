"""The step-latency model of a runner: measure its step time on the running machine and fit
``LatencyModel`` (AsymCache's recompute cost and adaptive chunking read it).

Steps are real runner steps over scratch blocks (run before any request, so every block is
free): single requests of ``n`` tokens after ``ctx`` cached ones, and batches of decodes.
The fit is cached on disk per (model, dtype, device, threads, block size)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from ember.core.batch import Batch, ScheduledRequest
from ember.errors import InvalidInputError
from ember.kvcache.cost_model import LatencyModel
from ember.models.config import ModelArchConfig
from ember.runner.base import Runner


def profile_grid(max_tokens: int, max_context: int, max_seqs: int, *, quick: bool) -> list[tuple[str, int, int]]:
    """``(kind, n, ctx)``: kind "prefill" = one request of n tokens after ctx; "decode" =
    n requests of one token, each after ctx."""
    sizes = [16, 128, 512] if quick else [1, 16, 64, 128, 256, 512, 1024, 2048]
    contexts = [0, 512] if quick else [0, 256, 1024, 2048]
    batches = [1, 32] if quick else [1, 8, 32, 64, 128]
    sizes = sorted({min(n, max_tokens) for n in sizes})
    contexts = sorted({min(c, max_context - 1) for c in contexts})
    batches = sorted({min(b, max_seqs) for b in batches})
    grid = [("prefill", n, c) for n in sizes for c in contexts if n + c <= max_context]
    grid += [("decode", b, c) for b in batches for c in contexts if c > 0]
    return grid


def measure(runner: Runner, kind: str, n: int, ctx: int, *, repeats: int) -> float:
    bs = runner.block_size
    num_blocks = runner.num_blocks
    if kind == "prefill":
        items = [(n, ctx)]
    else:
        items = [(1, ctx)] * n
    requests, next_block = [], 0
    for i, (num_tokens, context) in enumerate(items):
        blocks_needed = -(-(context + num_tokens) // bs)
        # NOTE: requests may share scratch blocks when the pool is small; timing is the same.
        blocks = [(next_block + j) % num_blocks for j in range(blocks_needed)]
        next_block = (next_block + blocks_needed) % num_blocks
        requests.append(
            ScheduledRequest(
                request_id=str(i),
                token_ids=[1] * num_tokens,
                ranges=[(context, context + num_tokens)],
                block_ids=blocks,
                sample=True,
            )
        )
    batch = Batch(requests)
    runner.run(batch)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.run(batch)
        times.append(time.perf_counter() - start)
    # NOTE: the minimum, not the median: other load on the machine only ever adds time.
    return min(times)


def profile_latency(
    runner: Runner, *, max_tokens: int, max_context: int, max_seqs: int, quick: bool = True, log=None
) -> LatencyModel:
    samples = []
    grid = profile_grid(max_tokens, max_context, max_seqs, quick=quick)
    for i, (kind, n, ctx) in enumerate(grid):
        seconds = measure(runner, kind, n, ctx, repeats=3 if quick else 7)
        if log:
            log(f"[profile {i + 1}/{len(grid)}] {kind} n={n} ctx={ctx}: {seconds * 1e3:.1f} ms")
        if kind == "prefill":
            samples.append(([(n, ctx)], seconds))
        else:
            samples.append(([(1, ctx)] * n, seconds))
    return LatencyModel.fit_batches(samples, source="quick profile" if quick else "profile")


def profile_key(model_path: str, dtype: torch.dtype, device: torch.device, block_size: int) -> str:
    ident = json.dumps(
        [
            str(Path(model_path).resolve()),
            str(dtype),
            str(device),
            torch.get_num_threads(),
            block_size,
            torch.__version__,
        ]
    )
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def load_latency_model(
    choice: str,
    runner: Runner,
    arch: ModelArchConfig,
    model_path: str,
    *,
    max_model_len: int,
    max_tokens: int,
    max_seqs: int,
    log=None,
) -> LatencyModel:
    """The engine's latency model: ``choice`` is "analytic", a JSON path, or "auto" (the
    cached profile of this model and machine, measured now if missing; the analytic model for
    a runner that cannot be profiled here)."""
    from ember.zoo import cache_dir

    if choice == "analytic" or (choice == "auto" and not runner.can_profile):
        return LatencyModel.analytic(
            num_params=runner.num_params, hidden_size=arch.hidden_size, num_layers=arch.num_layers
        )
    if choice != "auto":
        try:
            return LatencyModel.load(Path(choice))
        except (OSError, ValueError, TypeError) as exc:
            raise InvalidInputError(f"cannot read latency model {choice!r}: {exc}", param="latency_model") from exc
    key = profile_key(model_path, runner.kv_dtype, runner.device, runner.block_size)
    path = cache_dir() / "latency" / f"{key}.json"
    if path.exists():
        try:
            return LatencyModel.load(path)
        except (OSError, ValueError, TypeError):
            pass  # NOTE: a corrupt cache entry is measured again
    model = profile_latency(
        runner,
        max_tokens=max_tokens,
        max_context=min(max_model_len, runner.num_blocks * runner.block_size // 2),
        max_seqs=max_seqs,
        quick=True,
        log=log,
    )
    model.save(path)
    return model
