"""The scheduler on plain data: a real KV-cache manager, no model (as vLLM tests its CPU
scheduler). Tests invent the "sampled" tokens; every step checks the scheduler's and the
manager's integrity and that each batch item's tokens are the request's at its ranges."""

from __future__ import annotations

import pytest
from scheduler_util import (
    POLICIES,
    assert_all_free,
    ids,
    item_of,
    make_request,
    make_scheduler,
    run_to_end,
    step,
)

from ember.core.request import RequestStatus
from ember.speculative.token_tree import TokenTree


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
