"""Random insert / match / lock / evict / free sequences on the tree manager (every policy):
integrity holds after every operation, and a block a request holds is never evicted."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ember.engine.request import Request
from ember.kvcache.cost_model import LatencyModel
from ember.kvcache.factory import make_kv_cache_manager
from ember.sampling_params import SamplingParams

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
    manager = make_kv_cache_manager(policy, num_blocks=num_blocks, block_size=BLOCK, latency_model=MODEL)
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
        manager = make_kv_cache_manager(policy, num_blocks=8, block_size=BLOCK, latency_model=MODEL)
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
