"""The scheduler on plain data: a real KV-cache manager, no model (as vLLM tests its CPU
scheduler). Tests invent the "sampled" tokens; every step checks the scheduler's and the
manager's integrity and that each batch item's tokens are the request's at its ranges."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping

import pytest

from ember.config import CacheConfig, SchedulerConfig
from ember.core.batch import Batch, KVCopy, SerializedTree
from ember.core.request import Request, RequestStatus
from ember.core.sampling_params import SamplingParams
from ember.engine.chunking import AdaptiveBudget
from ember.engine.scheduler import Scheduler
from ember.kvcache.cost_model import LatencyModel
from ember.kvcache.factory import make_kv_cache_manager
from ember.speculative.token_tree import TokenTree

BLOCK = 4
MODEL = LatencyModel(fixed_s=1e-3, per_token_s=1e-4, per_pair_s=1e-6)
POLICIES = ["asym", "lru", "hash"]


# ------------------------------------------------------------------ helpers
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


# ------------------------------------------------------- 1. admission and budget
@pytest.mark.parametrize("policy", POLICIES)
def test_first_step_fills_the_budget_with_prompt_chunks(policy):
    sched = make_scheduler(policy, budget=16)
    for rid, n in (("a", 10), ("b", 10), ("c", 20)):
        sched.add(make_request(rid, n))
    batch = step(sched)
    assert ids(batch) == ["a", "b"]
    assert item_of(batch, "a").ranges == [(0, 10)] and item_of(batch, "a").sample
    assert item_of(batch, "b").ranges == [(0, 6)] and not item_of(batch, "b").sample
    assert batch.num_tokens == 16
    assert [r.request_id for r in sched.waiting] == ["c"]
    assert sched.requests["a"].num_output_tokens == 1 and sched.requests["b"].num_output_tokens == 0
    assert sched.requests["b"].num_computed_tokens == 6

    batch = step(sched)
    # a decodes, b finishes its prompt, c gets what is left
    assert [(r.request_id, r.ranges, r.sample) for r in batch.requests] == [
        ("a", [(10, 11)], True),
        ("b", [(6, 10)], True),
        ("c", [(0, 11)], False),
    ]


@pytest.mark.parametrize("policy", POLICIES)
def test_chunked_prefill_splits_a_long_prompt(policy):
    sched = make_scheduler(policy, budget=16)
    sched.add(make_request("a", 40, max_tokens=2))
    a = sched.requests["a"]
    prompt = list(a.prompt_token_ids)
    expected = [([(0, 16)], False), ([(16, 32)], False), ([(32, 40)], True), ([(40, 41)], True)]
    for n, (ranges, sample) in enumerate(expected):
        (item,) = step(sched).requests
        assert (item.ranges, item.sample) == (ranges, sample)
        assert a.num_output_tokens == max(0, n - 1)
        if n < 3:
            assert item.token_ids == prompt[ranges[0][0] : ranges[0][1]]
    assert not sched.has_unfinished
    assert_all_free(sched)


@pytest.mark.parametrize("policy", POLICIES)
def test_without_chunking_a_long_prompt_runs_whole_and_alone(policy):
    sched = make_scheduler(policy, budget=16, chunked=False)
    sched.add(make_request("small", 4, max_tokens=2))
    sched.add(make_request("long", 40, max_tokens=2))
    sched.add(make_request("after", 4, max_tokens=1))

    batch = step(sched)
    assert ids(batch) == ["small"]  # the long one is not split, and it blocks the queue
    batch = step(sched)
    assert ids(batch) == ["small"]  # not first in the batch: it waits
    assert sched.requests.get("small") is None  # finished (max_tokens=2)

    batch = step(sched)
    assert ids(batch) == ["long"]
    (item,) = batch.requests
    assert item.ranges == [(0, 40)] and item.sample and batch.num_tokens == 40 > 16
    batch = step(sched)
    assert [(r.request_id, r.ranges) for r in batch.requests] == [("long", [(40, 41)]), ("after", [(0, 4)])]
    run_to_end(sched)
    assert_all_free(sched)


@pytest.mark.parametrize("policy", POLICIES)
def test_max_num_seqs_caps_running_requests(policy):
    sched = make_scheduler(policy, budget=64, max_num_seqs=2)
    sched.add(make_request("a", 4, max_tokens=1))
    sched.add(make_request("b", 4, max_tokens=5))
    sched.add(make_request("c", 4, max_tokens=5))
    batch = step(sched)
    assert ids(batch) == ["a", "b"]
    assert [r.request_id for r in sched.waiting] == ["c"]
    assert sched.requests.get("a") is None  # a finished: a seat is free
    batch = step(sched)
    assert [(r.request_id, r.ranges) for r in batch.requests] == [("b", [(4, 5)]), ("c", [(0, 4)])]
    while sched.has_unfinished:
        step(sched)
        assert sched.num_running <= 2


# --------------------------------------------------------------- 2. decodes first
@pytest.mark.parametrize("policy", POLICIES)
def test_running_requests_are_scheduled_before_waiting_ones(policy):
    sched = make_scheduler(policy, budget=8)
    sched.add(make_request("a", 6))
    assert item_of(step(sched), "a").ranges == [(0, 6)]
    sched.add(make_request("b", 12))
    batch = step(sched)
    assert [(r.request_id, r.ranges, r.sample) for r in batch.requests] == [
        ("a", [(6, 7)], True),
        ("b", [(0, 7)], False),
    ]
    batch = step(sched)
    assert [(r.request_id, r.ranges, r.sample) for r in batch.requests] == [
        ("a", [(7, 8)], True),
        ("b", [(7, 12)], True),
    ]
    # a decode is always (n - 1, n) and samples
    batch = step(sched)
    for item in batch.requests:
        n = sched.requests[item.request_id].num_tokens - 1  # one token was appended since
        assert (
            item.ranges == [(n - 1, n)]
            and item.sample
            and item.token_ids == [sched.requests[item.request_id].all_token_ids[n - 1]]
        )


@pytest.mark.parametrize("policy", POLICIES)
def test_decodes_take_the_budget_before_a_waiting_request(policy):
    sched = make_scheduler(policy, budget=2)
    sched.add(make_request("a", 2))
    sched.add(make_request("b", 3))
    step(sched)  # a (0, 2)
    batch = step(sched)
    assert [(r.request_id, r.ranges) for r in batch.requests] == [("a", [(2, 3)]), ("b", [(0, 1)])]
    step(sched)  # a decodes, b (1, 2)
    batch = step(sched)
    assert [(r.request_id, r.ranges, r.sample) for r in batch.requests] == [
        ("a", [(4, 5)], True),
        ("b", [(2, 3)], True),
    ]
    sched.add(make_request("c", 1))
    batch = step(sched)
    assert ids(batch) == ["a", "b"] and batch.num_tokens == 2
    assert [r.request_id for r in sched.waiting] == ["c"]


# ------------------------------------------------------------------ 3. preemption
@pytest.mark.parametrize("policy, recompute_from", [("asym", 0), ("lru", 0), ("hash", 4)])
def test_the_newest_request_is_preempted_and_recomputed(policy, recompute_from):
    # 4 blocks of 4: two 7-token prompts take 2 blocks each; the third decode of "old"
    # needs a third block, and only preempting "new" gives it one.
    sched = make_scheduler(policy, num_blocks=4, budget=64)
    old, new = make_request("old", 7, max_tokens=4), make_request("new", 7, max_tokens=4)
    sched.add(old)
    sched.add(new)
    assert ids(step(sched)) == ["old", "new"]
    late = make_request("late", 3, max_tokens=1)
    sched.add(late)  # no free block for it
    assert ids(step(sched)) == ["old", "new"]
    assert list(sched.waiting) == [late]
    outputs_before = list(new.output_token_ids)
    assert len(outputs_before) == 2

    batch = step(sched)
    assert batch.preempted_ids == ["new"]
    assert ids(batch) == ["old"] and item_of(batch, "old").ranges == [(8, 9)]
    assert new.status == RequestStatus.WAITING and new.num_computed_tokens == 0 and new.num_preemptions == 1
    assert list(sched.waiting) == [new, late] and sched.running == [old]  # in front
    assert new.output_token_ids == outputs_before  # kept: nothing sampled is lost
    assert sched.kv_cache.block_table("new") == []
    assert sched.num_preemptions == 1

    while new.status == RequestStatus.WAITING:
        batch = step(sched)
        if "late" in ids(batch):  # never before the preempted one
            assert ids(batch).index("new") < ids(batch).index("late")
    # recomputed: prompt + the outputs so far, up to the last one, which is sampled from
    item = item_of(batch, "new")
    # (the tree managers' eviction took all of its blocks; the hash pool reallocated only
    # its tail block, so its first block is a prefix hit)
    assert item.ranges == [(recompute_from, 7 + 2)] and item.sample
    assert new.output_token_ids[:2] == outputs_before and new.num_output_tokens == 3
    run_to_end(sched)
    assert old.status == new.status == RequestStatus.FINISHED_LENGTH
    assert old.num_output_tokens == new.num_output_tokens == 4
    assert_all_free(sched)


@pytest.mark.parametrize("policy", POLICIES)
def test_no_admission_in_a_step_that_preempted(policy):
    # "new" holds 3 blocks after a speculative step (its tree's storage) but needs 2; when
    # "old" needs a block, "new" is preempted. It would fit again at once (its first block is
    # still cached), yet no request is admitted in that step: memory is short.
    sched = make_scheduler(policy, num_blocks=6, budget=64)
    old, new = make_request("old", 8, max_tokens=10), make_request("new", 3, max_tokens=10)
    sched.add(old)
    sched.add(new)
    step(sched)  # old 2 blocks, new 1 block
    tree = TokenTree.from_paths(new.all_token_ids[-1], [[1, 2, 3, 4], [5, 6, 7, 8]]).serialize(new.num_tokens - 1)
    batch = step(sched, {"new": tree}, sampled={"new": [42]})  # nothing accepted, bonus 42
    assert item_of(batch, "new").tree is tree
    assert len(sched.kv_cache.block_table("new")) == 3 and new.num_tokens == 5
    for _ in range(10):
        batch = step(sched)
        if batch.preempted_ids:
            break
    assert batch.preempted_ids == ["new"]
    assert ids(batch) == ["old"] and list(sched.waiting) == [new]
    batch = step(sched)
    assert ids(batch) == ["old", "new"]
    assert item_of(batch, "new").ranges == [(4, new.num_tokens - 1)]  # its first block was a hit
    run_to_end(sched)
    assert_all_free(sched)


# --------------------------------------------------------------------- 4. holes
def _hole_setup(budget: int, policy: str = "asym"):
    """``shared``: 48 tokens (12 blocks) cached by request "a"; a filler's prompt then needs
    eviction, which takes 8 blocks (the manager's minimum eviction batch). asym evicts the
    cheapest to recompute, the first 8 (positions 0-31), leaving blocks 8-11 cached after a
    hole; lru only leaves (the deepest)."""
    sched = make_scheduler(policy, num_blocks=20, budget=budget)
    shared = [7000 + i for i in range(48)]
    sched.add(make_request("a", shared + [1], max_tokens=1))
    run_to_end(sched)
    sched.add(make_request("filler", 40, max_tokens=1))
    run_to_end(sched)
    b = make_request("b", shared + [2, 3, 4], max_tokens=2)
    sched.add(b)
    return sched, b


def test_hole_is_scheduled_before_new_tokens_in_one_item():
    sched, b = _hole_setup(budget=64)
    batch = step(sched)
    item = item_of(batch, "b")
    assert item.ranges == [(0, 32), (48, 51)] and item.sample
    assert item.token_ids == b.all_token_ids[:32] + b.all_token_ids[48:51]
    assert list(item.positions()) == list(range(32)) + [48, 49, 50]
    assert sched.num_recomputed_hole_tokens == 32
    assert b.pending_holes == [] and b.num_computed_tokens == 51 and b.num_cached_prompt_tokens == 16
    run_to_end(sched)
    assert_all_free(sched)


@pytest.mark.parametrize(
    "budget, expected",
    [
        (20, [[(0, 20)], [(20, 32), (48, 51)]]),
        (16, [[(0, 16)], [(16, 32)], [(48, 51)]]),
        (8, [[(0, 8)], [(8, 16)], [(16, 24)], [(24, 32)], [(48, 51)]]),
    ],
)
def test_holes_come_first_under_a_small_budget(budget, expected):
    sched, b = _hole_setup(budget=budget)
    got = []
    while b.num_output_tokens == 0:
        batch = step(sched)
        item = item_of(batch, "b")
        got.append(item.ranges)
        assert item.sample == (item.kv_len == 51)
        assert item.token_ids == [b.all_token_ids[p] for p in item.positions()]
    assert got == expected
    assert sched.num_recomputed_hole_tokens == 32
    run_to_end(sched)
    assert_all_free(sched)


@pytest.mark.parametrize("policy, hit", [("lru", 16), ("hash", 40)])
def test_leaf_first_caches_give_a_plain_prefix_hit(policy, hit):
    """Same workload: lru evicts the 8 deepest blocks, the hash pool the least recently
    freed; either way the hit is a hole-free prefix and the rest runs after it."""
    sched, b = _hole_setup(budget=64, policy=policy)
    batch = step(sched)
    assert item_of(batch, "b").ranges == [(hit, 51)]
    assert b.num_cached_prompt_tokens == hit and sched.num_recomputed_hole_tokens == 0
    run_to_end(sched)
    assert_all_free(sched)


# ----------------------------------------------------------------- 5. token trees
def _two_decoding(policy: str, budget: int = 64, **kwargs):
    sched = make_scheduler(policy, budget=budget, **kwargs)
    a, b = make_request("a", 8, max_tokens=20), make_request("b", 8, max_tokens=20)
    sched.add(a)
    sched.add(b)
    step(sched)
    assert a.num_tokens == b.num_tokens == 9 and a.num_computed_tokens == 8
    return sched, a, b


def tree_for(request: Request, paths, start: int | None = None) -> SerializedTree:
    start = request.num_tokens - 1 if start is None else start
    return TokenTree.from_paths(request.all_token_ids[-1], paths).serialize(start)


@pytest.mark.parametrize("policy", POLICIES)
def test_tree_runs_and_commits_the_accepted_path(policy):
    sched, a, b = _two_decoding(policy)
    first = a.output_token_ids[0]
    # nodes: 0 root, 1: 11, 2: 12, 3: 21, 4: 22, 5: 23
    tree = tree_for(a, [[11, 12], [21, 22, 23]])
    batch = step(sched, {"a": tree}, sampled={"a": [21, 22, 99]})
    item = item_of(batch, "a")
    assert item.tree is tree and item.ranges == [(8, 14)]
    assert item.token_ids == tree.token_ids == [first, 11, 12, 21, 22, 23]
    assert item_of(batch, "b").tree is None and item_of(batch, "b").ranges == [(8, 9)]
    assert a.output_token_ids[1:] == [21, 22, 99] and a.num_tokens == 12
    assert a.num_computed_tokens == a.num_tokens - 1 == 11

    # the accepted nodes 3 and 4 (depths 1, 2) move from storage 11, 12 to 9, 10
    bids = item.block_ids
    expected = (KVCopy.within(bids, BLOCK, 11, 9), KVCopy.within(bids, BLOCK, 12, 10))
    assert expected == (
        KVCopy(bids[2] * BLOCK + 3, bids[2] * BLOCK + 1),
        KVCopy(bids[3] * BLOCK + 0, bids[2] * BLOCK + 2),
    )
    batch = step(sched)
    assert batch.kv_copies == expected
    assert item_of(batch, "a").ranges == [(11, 12)] and item_of(batch, "a").tree is None
    assert step(sched).kv_copies == ()
    run_to_end(sched)
    assert_all_free(sched)


@pytest.mark.parametrize("policy", POLICIES)
def test_accepted_path_in_place_needs_no_copy(policy):
    sched, a, b = _two_decoding(policy)
    tree = tree_for(a, [[11, 12], [21]])
    batch = step(sched, {"a": tree}, sampled={"a": [11, 12, 5]})
    assert item_of(batch, "a").tree is tree
    assert a.output_token_ids[1:] == [11, 12, 5] and a.num_computed_tokens == 11
    assert step(sched).kv_copies == ()


@pytest.mark.parametrize("policy", POLICIES)
def test_copies_wait_for_a_batch_that_runs(policy):
    sched = make_scheduler(policy)
    a = make_request("a", 8, max_tokens=4)
    sched.add(a)
    step(sched)
    tree = tree_for(a, [[11], [21, 22, 23]])
    batch = step(sched, {"a": tree}, sampled={"a": [21, 22, 23]})  # 21, 22 accepted, 23 bonus: max_tokens
    bids = item_of(batch, "a").block_ids
    assert a.status == RequestStatus.FINISHED_LENGTH and a.output_token_ids[1:] == [21, 22, 23]
    empty = sched.schedule()
    sched.check_integrity()
    assert empty.is_empty and empty.kv_copies == ()
    sched.add(make_request("c", 4))
    batch = step(sched)
    assert ids(batch) == ["c"]
    assert batch.kv_copies == (KVCopy.within(bids, BLOCK, 10, 9), KVCopy.within(bids, BLOCK, 11, 10))
    assert step(sched).kv_copies == ()


@pytest.mark.parametrize("policy", POLICIES)
def test_tree_over_the_remaining_budget_falls_back_to_a_decode(policy):
    sched = make_scheduler(policy, budget=8)
    a, b = make_request("a", 4, max_tokens=20), make_request("b", 4, max_tokens=20)
    sched.add(a)
    sched.add(b)
    assert ids(step(sched)) == ["a", "b"]  # 4 + 4 tokens
    paths = [[11, 12, 13], [21, 22, 23, 24]]  # 8 nodes
    # after a's decode 7 tokens are left: b's 8-node tree does not fit
    batch = step(sched, {"b": tree_for(b, paths)})
    assert item_of(batch, "a").ranges == [(4, 5)]
    item = item_of(batch, "b")
    assert item.tree is None and item.ranges == [(4, 5)] and item.token_ids == [b.all_token_ids[4]]
    assert b.num_output_tokens == 2

    # first in the batch, the same size fits (8 <= 8) and takes the whole budget
    tree = tree_for(a, paths)
    batch = step(sched, {"a": tree}, sampled={"a": [11, 7]})
    assert item_of(batch, "a").tree is tree and item_of(batch, "a").ranges == [(5, 13)]
    assert batch.num_tokens == 8 and ids(batch) == ["a"]
    assert a.output_token_ids[2:] == [11, 7] and a.num_computed_tokens == 7

    # a root-only tree is a plain decode
    batch = step(sched, {"a": tree_for(a, [])})
    assert item_of(batch, "a").tree is None and item_of(batch, "a").ranges == [(7, 8)]


@pytest.mark.parametrize("policy", POLICIES)
def test_tree_for_a_prefilling_request_or_at_the_wrong_start_is_ignored(policy):
    sched = make_scheduler(policy, budget=16)
    a = make_request("a", 50)
    sched.add(a)
    step(sched)  # (0, 16)
    # at where its next chunk starts, and where its root will be once prefilled
    for start, ranges in ((16, [(16, 32)]), (49, [(32, 48)])):
        batch = step(sched, {"a": TokenTree.from_paths(a.all_token_ids[-1], [[1, 2]]).serialize(start)})
        item = item_of(batch, "a")
        assert item.tree is None and not item.sample and item.ranges == ranges
    step(sched)  # (48, 50): a samples its first token
    assert a.num_tokens == 51 and a.num_computed_tokens == 50
    for offset in (-2, 0):  # the root belongs at num_tokens - 1
        batch = step(sched, {"a": tree_for(a, [[1, 2]], start=a.num_tokens + offset)})
        item = item_of(batch, "a")
        assert item.tree is None and item.ranges == [(a.num_tokens - 2, a.num_tokens - 1)]
    assert step(sched).kv_copies == ()


@pytest.mark.parametrize("policy", POLICIES)
def test_stop_token_inside_the_accepted_run_finishes_there(policy):
    sched = make_scheduler(policy)
    a = make_request("a", 8, max_tokens=20, stop_token_ids=[77])
    sched.add(a)
    step(sched)
    first = a.output_token_ids[0]
    batch = step(sched, {"a": tree_for(a, [[5, 77, 6, 8]])}, sampled={"a": [5, 77, 6, 9]})
    assert item_of(batch, "a").tree is not None
    assert a.output_token_ids == [first, 5, 77]
    assert a.status == RequestStatus.FINISHED_STOPPED and a.stop_reason == 77
    assert_all_free(sched)


@pytest.mark.parametrize("policy", POLICIES)
def test_max_tokens_inside_the_accepted_run(policy):
    sched = make_scheduler(policy)
    a = make_request("a", 8, max_tokens=3)
    sched.add(a)
    step(sched)
    step(sched, {"a": tree_for(a, [[5, 6, 7]])}, sampled={"a": [5, 6, 7, 9]})
    assert a.num_output_tokens == 3 and a.output_token_ids[1:] == [5, 6]
    assert a.status == RequestStatus.FINISHED_LENGTH
    assert_all_free(sched)


# ------------------------------------------------------------------------ 6. stop
@pytest.mark.parametrize("policy", POLICIES)
def test_stop_truncates_finishes_and_frees(policy):
    sched = make_scheduler(policy, num_blocks=16)
    a = make_request("a", 6)
    sched.add(a)
    for _ in range(4):
        step(sched)
    assert a.num_output_tokens == 4
    assert sched.kv_cache.num_free_blocks < 16
    kept = a.output_token_ids[:2]
    sched.stop(a, num_output_tokens=2, stop_reason="x")
    assert a.output_token_ids == kept
    assert a.status == RequestStatus.FINISHED_STOPPED and a.stop_reason == "x"
    assert "a" not in sched.requests and a not in sched.running
    sched.check_integrity()
    assert_all_free(sched)
    assert sched.schedule().is_empty
    sched.check_integrity()


@pytest.mark.parametrize("policy", POLICIES)
def test_stop_after_a_length_finish(policy):
    sched = make_scheduler(policy)
    a, b = make_request("a", 6, max_tokens=3), make_request("b", 6, max_tokens=3)
    sched.add(a)
    sched.add(b)
    run_to_end(sched)
    assert a.status == b.status == RequestStatus.FINISHED_LENGTH
    # a stop string earlier than the last token: its tokens after it are dropped, and it wins
    sched.stop(a, num_output_tokens=2, stop_reason="x")
    assert a.num_output_tokens == 2 and a.status == RequestStatus.FINISHED_STOPPED and a.stop_reason == "x"
    # on the very last token: the length finish stays
    sched.stop(b, num_output_tokens=3, stop_reason="y")
    assert b.num_output_tokens == 3 and b.status == RequestStatus.FINISHED_LENGTH and b.stop_reason is None
    sched.check_integrity()
    assert_all_free(sched)


# ----------------------------------------------------------- 7. abort and finishing
@pytest.mark.parametrize("policy", POLICIES)
def test_abort_waiting_and_running(policy):
    sched = make_scheduler(policy, num_blocks=16, budget=8)
    a, b = make_request("a", 8), make_request("b", 8)
    sched.add(a)
    sched.add(b)
    step(sched)  # a runs; b waits (budget)
    assert list(sched.waiting) == [b]
    assert sched.abort("b") is b
    assert b.status == RequestStatus.FINISHED_ABORTED and not sched.waiting
    sched.check_integrity()
    assert sched.abort("b") is None and sched.abort("nope") is None

    assert sched.abort("a") is a
    assert a.status == RequestStatus.FINISHED_ABORTED
    sched.check_integrity()
    assert_all_free(sched)


@pytest.mark.parametrize("policy", POLICIES)
def test_abort_while_the_step_runs(policy):
    sched = make_scheduler(policy, num_blocks=16)
    a, b = make_request("a", 8), make_request("b", 8)
    sched.add(a)
    sched.add(b)
    batch = sched.schedule()
    sched.abort("a")
    sched.check_integrity()
    updated = sched.update(batch, {"a": [1], "b": [2]})
    assert updated == [b] and a.num_output_tokens == 0 and b.output_token_ids == [2]
    sched.check_integrity()
    run_to_end(sched)
    assert_all_free(sched)


@pytest.mark.parametrize("policy", POLICIES)
def test_max_tokens_and_max_model_len_finish_as_length(policy):
    sched = make_scheduler(policy, max_model_len=12)
    by_tokens, by_len = make_request("t", 4, max_tokens=3), make_request("l", 10, max_tokens=None)
    sched.add(by_tokens)
    sched.add(by_len)
    run_to_end(sched)
    assert by_tokens.status == by_len.status == RequestStatus.FINISHED_LENGTH
    assert by_tokens.num_output_tokens == 3
    assert by_len.num_output_tokens == 2 and by_len.num_tokens == 12
    assert_all_free(sched)


@pytest.mark.parametrize("policy", POLICIES)
def test_stop_tokens_eos_and_min_tokens(policy):
    sched = make_scheduler(policy)
    plan = {
        # rid: (params, tokens it samples, expected outputs, status, stop_reason)
        "stop": (dict(stop_token_ids=[7]), [3, 7, 4], [3, 7], RequestStatus.FINISHED_STOPPED, 7),
        "min": (dict(stop_token_ids=[7], min_tokens=2), [7, 7, 4], [7, 7], RequestStatus.FINISHED_STOPPED, 7),
        "min3": (
            dict(stop_token_ids=[7], min_tokens=3),
            [7, 7, 4, 5],
            [7, 7, 4, 5],
            RequestStatus.FINISHED_LENGTH,
            None,
        ),
        "eos": (dict(ignore_eos=False, eos_token_ids={5}), [3, 5, 4], [3, 5], RequestStatus.FINISHED_STOPPED, None),
        "ign": (
            dict(ignore_eos=True, eos_token_ids={5}),
            [5, 5, 5, 5],
            [5, 5, 5, 5],
            RequestStatus.FINISHED_LENGTH,
            None,
        ),
        "eosmin": (
            dict(ignore_eos=False, eos_token_ids={5}, min_tokens=2),
            [5, 5, 4],
            [5, 5],
            RequestStatus.FINISHED_STOPPED,
            None,
        ),
    }
    requests = {rid: make_request(rid, 3, max_tokens=4, **params) for rid, (params, *_) in plan.items()}
    for request in requests.values():
        sched.add(request)

    def token(request: Request) -> int:
        return plan[request.request_id][1][request.num_output_tokens]

    while sched.has_unfinished:
        step(sched, token=token)
    for rid, (_, _, outputs, status, reason) in plan.items():
        assert requests[rid].output_token_ids == outputs, rid
        assert (requests[rid].status, requests[rid].stop_reason) == (status, reason), rid
    assert_all_free(sched)


# -------------------------------------------------------------- 8. adaptive budget
def most_tokens_within(seconds: float, context: int) -> int:
    """Largest n whose marginal step time ``b n + c (n ctx + n^2 / 2)`` fits, by search."""
    n = 0
    while MODEL.step_time(n + 1, context) - MODEL.fixed_s <= seconds:
        n += 1
    return n


@pytest.mark.parametrize("policy", POLICIES)
def test_adaptive_chunks_shrink_with_context(policy):
    target = MODEL.step_time(64) + 1e-9
    budget_fn = AdaptiveBudget(model=MODEL, target_s=target, max_tokens=64, min_chunk=BLOCK)
    sched = make_scheduler(policy, num_blocks=128, budget=64, budget_fn=budget_fn)
    a = make_request("a", 300, max_tokens=1)
    sched.add(a)
    chunks = []
    while a.num_output_tokens == 0:
        computed = a.num_computed_tokens
        (item,) = step(sched).requests
        assert item.ranges[0][0] == computed
        chunks.append(item.num_tokens)
    assert chunks[0] == 64
    expected, done = [], 0
    while done < 300:
        n = 64 if done == 0 else max(most_tokens_within(target - MODEL.fixed_s, done), BLOCK)
        n = min(n, 300 - done)
        expected.append(n)
        done += n
    assert chunks == expected
    assert all(x > y for x, y in zip(chunks[:-2], chunks[1:-1])), chunks  # deeper, smaller


@pytest.mark.parametrize("policy", POLICIES)
def test_adaptive_budget_leaves_decodes_their_share(policy):
    target = MODEL.step_time(48) + 1e-9
    budget_fn = AdaptiveBudget(model=MODEL, target_s=target, max_tokens=64, min_chunk=BLOCK)
    sched = make_scheduler(policy, num_blocks=128, budget=64, budget_fn=budget_fn)
    d = make_request("d", 40, max_tokens=50)
    sched.add(d)
    step(sched)  # 40 tokens (budget 64, context 0)
    sched.add(make_request("p", 300, max_tokens=1))
    batch = step(sched)
    decode_s = MODEL.per_token_s + MODEL.per_pair_s * 40
    chunk = most_tokens_within(target - MODEL.fixed_s - decode_s, 0)
    assert BLOCK < chunk < most_tokens_within(target - MODEL.fixed_s, 0) == 48
    assert item_of(batch, "d").ranges == [(40, 41)]
    assert item_of(batch, "p").ranges == [(0, chunk)]
    assert batch.num_tokens == 1 + chunk


def test_adaptive_budget_keeps_a_floor():
    budget_fn = AdaptiveBudget(model=MODEL, target_s=MODEL.fixed_s / 2, max_tokens=64, min_chunk=BLOCK)
    sched = make_scheduler("asym", budget=64, budget_fn=budget_fn)
    sched.add(make_request("a", 10, max_tokens=1))
    assert [item.ranges for item in step(sched).requests] == [[(0, 4)]]
    assert [item.ranges for item in step(sched).requests] == [[(4, 8)]]


# ---------------------------------------------------- found by these tests, then fixed
def test_adaptive_budget_without_chunking_runs_a_long_prompt():
    # without chunked prefill a prompt over the budget runs whole, alone, in a step whose whole
    # (adaptive) budget is still free; it used to need budget == max_num_batched_tokens
    target = MODEL.step_time(32) + 1e-9  # adaptive budget 32 when nothing runs
    budget_fn = AdaptiveBudget(model=MODEL, target_s=target, max_tokens=64, min_chunk=BLOCK)
    sched = make_scheduler("asym", budget=64, chunked=False, budget_fn=budget_fn)
    assert budget_fn([]) == 32
    sched.add(make_request("a", 40, max_tokens=1))
    batches = [step(sched) for _ in range(3)]
    assert any("a" in ids(b) for b in batches)


@pytest.mark.parametrize("policy", POLICIES)
def test_tree_that_does_not_fit_in_memory_falls_back_to_a_decode(policy):
    # a tree gets only free blocks: it used to preempt its own request (a full recompute)
    sched = make_scheduler(policy, num_blocks=4, budget=64)
    a = make_request("a", 5)
    sched.add(a)
    step(sched)  # 2 blocks; a plain decode (5, 6) fits in them
    tree = tree_for(a, [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11]])  # 12 nodes: storage to 17, 5 blocks
    batch = step(sched, {"a": tree})
    assert batch.preempted_ids == [] and a.num_preemptions == 0
    assert item_of(batch, "a").tree is None and item_of(batch, "a").ranges == [(5, 6)]
