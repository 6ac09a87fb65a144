"""AsymCache's KV-cache manager: a prefix tree with holes, an eviction policy, and a free list.

Blocks are in exactly one of three states:
    free       on the free list, content meaningless
    cached     attached to a tree node (shared, reusable; evictable when no request holds it)
    private    held by one request and not in the tree (a partial block, a duplicate of a
               block another request cached first, or one whose place was pruned)
"""

from __future__ import annotations

from collections.abc import Sequence

from ember.core.request import Request
from ember.kvcache.interface import BaseKVCacheManager, PrefixMatch
from ember.kvcache.policies import BaseEvictionPolicy
from ember.kvcache.prefix_tree import PrefixTree, TreeNode

# NOTE: evict in batches of at least this many blocks: one policy scan serves several
# allocations instead of one scan per block.
_MIN_EVICTION_BATCH = 8


class TreeKVCacheManager(BaseKVCacheManager):
    def __init__(self, *, num_blocks: int, block_size: int, policy: BaseEvictionPolicy) -> None:
        self.block_size = block_size
        self._num_blocks = num_blocks
        self.policy = policy
        self.tree = PrefixTree(block_size)
        self.free_list: list[int] = list(range(num_blocks - 1, -1, -1))
        self._blocks: dict[str, list[int]] = {}
        self._held: dict[str, list[TreeNode]] = {}  # nodes each request holds a ref on
        self._num_offered: dict[str, int] = {}  # leading blocks already offered to the tree
        self.num_queried_tokens = 0
        self.num_hit_tokens = 0
        self.num_evicted = 0
        self._waiting: Sequence[Request] = ()

    # ---------------------------------------------------------------- queries
    @property
    def num_blocks(self) -> int:
        return self._num_blocks

    @property
    def num_free_blocks(self) -> int:
        evictable = sum(1 for n in self.tree.nodes() if n.is_evictable)
        return len(self.free_list) + evictable

    @property
    def usage(self) -> float:
        """Fraction of blocks held by running requests (cached idle blocks count as free)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    @property
    def prefix_hit_rate(self) -> float:
        return self.num_hit_tokens / self.num_queried_tokens if self.num_queried_tokens else 0.0

    def block_table(self, request_id: str) -> list[int]:
        return self._blocks.get(request_id, [])

    # ------------------------------------------------------------------- verbs
    def match_prefix(self, request: Request) -> PrefixMatch:
        token_ids = request.all_token_ids
        max_blocks = (len(token_ids) - 1) // self.block_size
        path = self.tree.match(token_ids, max_blocks)
        if not self.policy.allows_holes:
            cut = next((i for i, n in enumerate(path) if n.is_hole), len(path))
            path = path[:cut]
        self.tree.touch(path, hit=True)
        match = PrefixMatch([n.block_id for n in path], self.block_size, handle=path)
        self.num_queried_tokens += request.num_prompt_tokens
        self.num_hit_tokens += min(match.num_cached_tokens, request.num_prompt_tokens)
        return match

    def allocate_slots(self, request: Request, num_new_tokens: int, match: PrefixMatch | None = None) -> bool:
        rid = request.request_id
        held_blocks = self._blocks.get(rid, [])
        path: list[TreeNode] = match.handle if match is not None and match.block_ids else []
        cached = [n for n in path if n.is_cached]
        num_computed = request.num_computed_tokens  # NOTE: includes the match (scheduler sets it)
        num_needed = -(-(num_computed + num_new_tokens) // self.block_size)
        num_fresh = max(0, num_needed - len(held_blocks) - len(path)) + (len(path) - len(cached))
        # NOTE: hold the matched blocks before evicting, so eviction cannot take them.
        self.tree.lock(cached)
        fresh = self._take(num_fresh)
        if fresh is None:
            self.tree.unlock(cached)
            return False
        blocks = self._blocks.setdefault(rid, [])
        self._held.setdefault(rid, []).extend(cached)
        fresh_iter = iter(fresh)
        for node in path:
            blocks.append(node.block_id if node.is_cached else next(fresh_iter))
        blocks.extend(fresh_iter)
        if match is not None:
            self._num_offered[rid] = 0
        return True

    def cache_computed_blocks(self, request: Request) -> None:
        rid = request.request_id
        blocks = self._blocks[rid]
        num_full = request.num_computed_tokens // self.block_size
        start = self._num_offered.get(rid, 0)
        if start >= num_full:
            return
        first_hole = min((s // self.block_size for s, _ in request.pending_holes), default=num_full)
        num_ready = min(num_full, first_hole)
        if num_ready <= start:
            return
        token_ids = request.all_token_ids
        node, offered = self.tree.root, []
        for i in range(num_ready):
            node = self.tree.child(node, tuple(token_ids[i * self.block_size : (i + 1) * self.block_size]))
            if i < start:
                continue
            offered.append(node)
            if node.block_id is None and blocks[i] not in self.tree.by_block:
                self.tree.attach(node, blocks[i])
                self.tree.lock([node])
                self._held[rid].append(node)
        self.tree.touch(offered, hit=False)
        self._num_offered[rid] = num_ready

    def free(self, request: Request) -> None:
        rid = request.request_id
        held = self._held.pop(rid, [])
        self.tree.unlock(held)
        in_tree = {n.block_id for n in held}
        private = [b for b in self._blocks.pop(rid, []) if b not in in_tree]
        self.free_list.extend(reversed(private))
        self._num_offered.pop(rid, None)

    def observe_queue(self, waiting: Sequence[Request]) -> None:
        self._waiting = waiting

    def reset_prefix_cache(self) -> None:
        self._evict(self.num_blocks)

    # -------------------------------------------------------------- internals
    def _take(self, num: int) -> list[int] | None:
        if num > len(self.free_list):
            self._evict(max(num - len(self.free_list), _MIN_EVICTION_BATCH))
            if num > len(self.free_list):
                return None
        return [self.free_list.pop() for _ in range(num)]

    def _upcoming(self) -> dict[int, int]:
        """node_id -> position in the waiting queue of the first request that will match it."""
        upcoming: dict[int, int] = {}
        for rank, request in enumerate(self._waiting):
            token_ids = request.all_token_ids
            for node in self.tree.match(token_ids, (len(token_ids) - 1) // self.block_size):
                upcoming.setdefault(node.node_id, rank)
        return upcoming

    def _evict(self, num: int) -> None:
        freed = 0
        upcoming = self._upcoming() if self._waiting else None
        while freed < num:
            victims = self.policy.select(self.tree, num - freed, upcoming)
            if not victims:
                return
            for node in victims:
                self.free_list.append(self.tree.detach(node))
            freed += len(victims)
            self.num_evicted += len(victims)

    def check_integrity(self, live_request_ids: set[str] | None = None) -> None:
        self.tree.check_integrity()
        if live_request_ids is not None:
            stale = set(self._blocks) - live_request_ids
            assert not stale, f"blocks held by requests that are not live: {sorted(stale)}"
        refs: dict[int, int] = {}
        for rid, nodes in self._held.items():
            for node in nodes:
                assert node.is_cached and node.block_id in self._blocks[rid], "held node not in table"
                refs[id(node)] = refs.get(id(node), 0) + 1
        for node in self.tree.nodes():
            assert node.ref_count == refs.get(id(node), 0), f"node {node.node_id}: ref count"
        owners: dict[int, int] = {}
        for blocks in self._blocks.values():
            assert len(set(blocks)) == len(blocks), "a request holds a block twice"
            for b in blocks:
                owners[b] = owners.get(b, 0) + 1
        free = set(self.free_list)
        assert len(free) == len(self.free_list), "a block is on the free list twice"
        for b in range(self.num_blocks):
            states = (b in free) + (b in self.tree.by_block) + (b in owners and b not in self.tree.by_block)
            assert states == 1, f"block {b}: free={b in free} cached={b in self.tree.by_block} owned={b in owners}"
            if owners.get(b, 0) > 1:
                assert b in self.tree.by_block, f"block {b}: shared but not cached"
