"""Scheduler unit tests, continued: token trees, stop(), aborts and finishing, the adaptive
budget (helpers in tests/scheduler_util.py)."""

from __future__ import annotations

import pytest
from scheduler_util import (
    BLOCK,
    MODEL,
    POLICIES,
    assert_all_free,
    ids,
    item_of,
    make_request,
    make_scheduler,
    run_to_end,
    step,
)

from ember.core.batch import KVCopy, SerializedTree
from ember.core.request import Request, RequestStatus
from ember.engine.chunking import AdaptiveBudget
from ember.speculative.token_tree import TokenTree


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
