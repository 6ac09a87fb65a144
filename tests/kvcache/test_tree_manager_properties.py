"""Random insert / match / lock / evict / free sequences on the tree manager (every policy):
integrity holds after every operation, and a block a request holds is never evicted."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ember.config import CacheConfig
from ember.core.request import Request
from ember.core.sampling_params import SamplingParams
from ember.kvcache.cost_model import LatencyModel
from ember.kvcache.factory import make_kv_cache_manager

BLOCK = 2
MODEL = LatencyModel(fixed_s=1e-3, per_token_s=1e-4, per_pair_s=1e-6)

# Token sequences from a tiny alphabet share prefixes and blocks often.
token_lists = st.lists(st.integers(0, 2), min_size=1, max_size=12)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), token_lists),
        st.tuples(st.just("step"), st.integers(0, 7), st.integers(1, 4)),
        st.tuples(st.just("finish"), st.integers(0, 7)),
        st.tuples(st.just("evict"), st.integers(1, 6)),
    ),
    max_size=40,
)


def snapshot_held(manager) -> dict[str, list[int]]:
    return {rid: list(blocks) for rid, blocks in manager._blocks.items()}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=st.sampled_from(["asym", "lru", "lfu"]), operations=ops, num_blocks=st.integers(4, 12))
def test_random_operations_keep_integrity(policy, operations, num_blocks):
    manager = make_kv_cache_manager(
        CacheConfig(block_size=BLOCK, cache_policy=policy), num_blocks=num_blocks, recompute_cost=MODEL.recompute_cost
    )
    live: list[Request] = []
    counter = 0
    for op in operations:
        if op[0] == "admit":
            counter += 1
            req = Request(request_id=str(counter), prompt_token_ids=list(op[1]) + [9], sampling_params=SamplingParams())
            match = manager.match_prefix(req)
            req.num_computed_tokens = match.num_tokens
            req.pending_holes = match.holes
            if manager.allocate_slots(req, req.num_tokens - match.num_tokens, match):
                # the request runs its holes and the rest of its prompt
                req.pending_holes = []
                req.num_computed_tokens = req.num_tokens
                manager.cache_computed_blocks(req)
                live.append(req)
        elif op[0] == "step" and live:
            req = live[op[1] % len(live)]
            before = snapshot_held(manager)
            if manager.allocate_slots(req, op[2]):
                req.output_token_ids += [op[1] % 3] * op[2]
                req.num_computed_tokens = req.num_tokens
                manager.cache_computed_blocks(req)
            # blocks a live request held are still its own, at the same places
            for rid, blocks in before.items():
                assert manager.block_table(rid)[: len(blocks)] == blocks
        elif op[0] == "finish" and live:
            manager.free(live.pop(op[1] % len(live)))
        elif op[0] == "evict":
            held = {b for blocks in manager._blocks.values() for b in blocks}
            victims = manager.policy.select(manager.tree, op[1])
            assert all(v.ref_count == 0 and v.block_id not in held for v in victims)
            manager._evict(op[1])
        manager.check_integrity({r.request_id for r in live})
    for req in live:
        manager.free(req)
    manager.check_integrity(set())
    assert manager.num_free_blocks == num_blocks


def test_lru_never_leaves_holes_and_asym_may():
    """Leaf-first policies keep a hole-free tree; asym evicts the cheapest block, here an
    early one (cheap to recompute at its position), and keeps the deeper ones reachable."""
    prompt = list(range(10))
    for policy, expect_holes in (("lru", False), ("asym", True)):
        manager = make_kv_cache_manager(
            CacheConfig(block_size=BLOCK, cache_policy=policy), num_blocks=8, recompute_cost=MODEL.recompute_cost
        )
        req = Request(request_id="a", prompt_token_ids=prompt + [99], sampling_params=SamplingParams())
        manager.allocate_slots(req, req.num_tokens, manager.match_prefix(req))
        req.num_computed_tokens = req.num_tokens
        manager.cache_computed_blocks(req)
        manager.free(req)
        manager._evict(1)
        again = Request(request_id="b", prompt_token_ids=prompt + [98], sampling_params=SamplingParams())
        match = manager.match_prefix(again)
        assert bool(match.holes) == expect_holes, policy
        if expect_holes:
            assert match.holes == [(0, BLOCK)] and match.num_tokens == len(prompt)
        manager.check_integrity(set())


def cache_prompt(manager, rid: str, prompt: list[int]) -> None:
    req = Request(request_id=rid, prompt_token_ids=prompt, sampling_params=SamplingParams())
    match = manager.match_prefix(req)
    req.num_computed_tokens = match.num_tokens
    assert manager.allocate_slots(req, req.num_tokens - match.num_tokens, match)
    req.num_computed_tokens = req.num_tokens
    manager.cache_computed_blocks(req)
    manager.free(req)


def test_asym_keeps_what_the_waiting_queue_will_reuse():
    """Three cached prompts, oldest first A, B, C; the queue holds a request for A, then one
    for C. Evicting keeps A and C's blocks over B's (nobody waits for it), then lets C's go
    before A's (needed later). LRU, blind to the queue, evicts A's first."""
    prompts = {name: [i * 10 + t for t in range(6)] + [99] for i, name in enumerate("ABC")}
    for policy, first_victim in (("asym", "B"), ("lru", "A")):
        # 3 full blocks + 1 partial each: 12 blocks hold all three without eviction
        manager = make_kv_cache_manager(
            CacheConfig(block_size=BLOCK, cache_policy=policy), num_blocks=12, recompute_cost=MODEL.recompute_cost
        )
        for name in "ABC":
            cache_prompt(manager, name, prompts[name])
        queue = [
            Request(request_id=f"q{name}", prompt_token_ids=prompts[name] + [7], sampling_params=SamplingParams())
            for name in "AC"
        ]
        manager.observe_queue(queue)
        blocks_of = {name: set(manager.tree.match(prompts[name], 3)) for name in "ABC"}
        assert all(blocks_of[name] for name in "ABC")
        victims = manager.policy.select(manager.tree, 3, manager._upcoming())
        assert victims and victims[0] in blocks_of[first_victim], policy
        if policy == "asym":
            manager._evict(3)
            manager._evict(1)  # B is gone; next to go is C's (queued second), not A's
            assert all(n.is_cached for n in manager.tree.match(prompts["A"], 3))
            assert not all(n.is_cached for n in manager.tree.match(prompts["C"], 3))
        manager.check_integrity(set())
