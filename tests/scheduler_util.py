"""Helpers of the scheduler unit tests (tests/engine/test_scheduler*.py): a scheduler over a
real KV manager and no model, steps with invented tokens and integrity checks."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping

from ember.config import CacheConfig, SchedulerConfig
from ember.core.batch import Batch, SerializedTree
from ember.core.request import Request, RequestStatus
from ember.core.sampling_params import SamplingParams
from ember.engine.scheduler import Scheduler
from ember.kvcache.cost_model import LatencyModel
from ember.kvcache.factory import make_kv_cache_manager

BLOCK = 4
MODEL = LatencyModel(fixed_s=1e-3, per_token_s=1e-4, per_pair_s=1e-6)
POLICIES = ["asym", "lru", "hash"]


def make_scheduler(
    policy: str = "asym",
    *,
    num_blocks: int = 64,
    budget: int = 64,
    max_num_seqs: int = 8,
    max_model_len: int = 256,
    chunked: bool = True,
    budget_fn=None,
) -> Scheduler:
    kv = make_kv_cache_manager(
        CacheConfig(block_size=BLOCK, cache_policy=policy), num_blocks=num_blocks, recompute_cost=MODEL.recompute_cost
    )
    config = SchedulerConfig(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=budget,
        max_model_len=max_model_len,
        enable_chunked_prefill=chunked,
    )
    return Scheduler(config, kv, budget_fn=budget_fn)


def make_request(rid: str, prompt: list[int] | int, *, max_tokens: int | None = 16, **params) -> Request:
    """``prompt``: token ids, or a length (then tokens unique to ``rid``, so that no two
    requests share a block by accident)."""
    if isinstance(prompt, int):
        base = 1000 * (1 + zlib.crc32(rid.encode()) % 100_000)
        prompt = [base + i for i in range(prompt)]
    eos = params.pop("eos_token_ids", frozenset())
    params.setdefault("ignore_eos", True)
    return Request(
        request_id=rid,
        prompt_token_ids=list(prompt),
        sampling_params=SamplingParams(temperature=0, max_tokens=max_tokens, **params),
        eos_token_ids=frozenset(eos),
    )


def invented_token(request: Request) -> int:
    return 500_000 + 10 * request.num_output_tokens + len(request.request_id)


def check_batch(sched: Scheduler, batch: Batch, budget: int | None = None) -> None:
    """Shape of every item, before ``update`` changes the requests."""
    block_size = sched.kv_cache.block_size
    for item in batch.requests:
        request = sched.requests[item.request_id]
        assert request.status == RequestStatus.RUNNING and request in sched.running
        assert list(item.block_ids) == list(sched.kv_cache.block_table(item.request_id))
        assert len(item.block_ids) * block_size >= item.kv_len, "every written slot has a block"
        if item.tree is not None:
            assert item.token_ids == item.tree.token_ids
            assert item.ranges == [(item.tree.start_position, item.tree.kv_len)]
            assert item.sample
            continue
        for (s0, e0), (s1, _) in zip(item.ranges, item.ranges[1:]):
            assert s0 < e0 <= s1, f"ranges ascending and disjoint: {item.ranges}"
        all_ids = request.all_token_ids
        assert item.token_ids == [all_ids[p] for p in item.positions()]
        assert item.sample == (item.kv_len == request.num_tokens)
    if budget is not None and not (len(batch.requests) == 1 and not sched.config.enable_chunked_prefill):
        assert batch.num_tokens <= budget


def step(
    sched: Scheduler,
    trees: Mapping[str, SerializedTree] | None = None,
    *,
    sampled: Mapping[str, list[int]] | None = None,
    token: Callable[[Request], int] = invented_token,
) -> Batch:
    """One engine step without a model: schedule, check, "sample", update, check.
    ``sampled`` overrides the invented token for the ids it names (a tree's accepted
    tokens + bonus)."""
    budget = sched.budget_fn(sched.running) if sched.budget_fn else sched.config.max_num_batched_tokens
    batch = sched.schedule(trees)
    sched.check_integrity()
    check_batch(sched, batch, budget)
    out: dict[str, list[int]] = {}
    for item in batch.requests:
        if item.sample:
            if sampled is not None and item.request_id in sampled:
                out[item.request_id] = list(sampled[item.request_id])
            else:
                out[item.request_id] = [token(sched.requests[item.request_id])]
    sched.update(batch, out)
    sched.check_integrity()
    return batch


def run_to_end(sched: Scheduler, max_steps: int = 500) -> list[Batch]:
    batches = []
    for _ in range(max_steps):
        if not sched.has_unfinished:
            return batches
        batches.append(step(sched))
    raise AssertionError("requests did not finish")


def item_of(batch: Batch, rid: str):
    (item,) = [r for r in batch.requests if r.request_id == rid]
    return item


def ids(batch: Batch) -> list[str]:
    return [r.request_id for r in batch.requests]


def assert_all_free(sched: Scheduler) -> None:
    assert not sched.running and not sched.requests
    assert sched.kv_cache.num_free_blocks == sched.kv_cache.num_blocks
    sched.kv_cache.check_integrity(set())
