"""Which cached blocks to evict, behind one interface.

``lru`` and ``lfu`` are what peers do (SGLang's radix cache, vLLM's free queue): evict leaves
only, so the cache stays a prefix tree without holes, and a lookup stops at the first miss.
``asym`` (AsymCache) may evict any unreferenced block, keeps the tokens and place of what it
evicts, and ranks blocks by what keeping them is worth: estimated reuse times the time it
would take to recompute them *at their position* (a block deep in a long context costs more,
since its queries attend to everything before it). All blocks have the same size, so value
per byte orders them the same way as value."""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections.abc import Callable

from ember.kvcache.prefix_tree import PrefixTree, TreeNode

# (position of the block's first token, tokens in the block) -> seconds to recompute it
RecomputeCost = Callable[[int, int], float]


class BaseEvictionPolicy(ABC):
    name: str
    #: a lookup continues through holes (and any unreferenced node may be evicted)
    allows_holes: bool

    @abstractmethod
    def select(self, tree: PrefixTree, num_blocks: int, upcoming: dict[int, int] | None = None) -> list[TreeNode]:
        """Up to ``num_blocks`` unreferenced cached nodes to evict now, best victims first.

        ``upcoming`` maps ``node_id`` to the queue position of the first waiting request
        that will reuse the node (policies may ignore it). May return fewer (then the caller
        asks again: evicting leaves exposes new leaves), and returns an empty list only when
        nothing can be evicted."""


class LRUPolicy(BaseEvictionPolicy):
    name = "lru"
    allows_holes = False

    def key(self, node: TreeNode):
        # NOTE: on equal recency the deeper block goes first, so a prefix outlives its tail.
        return (node.last_access, -node.depth)

    def select(self, tree: PrefixTree, num_blocks: int, upcoming: dict[int, int] | None = None) -> list[TreeNode]:
        leaves = (n for n in tree.nodes() if n.is_evictable and n.is_leaf)
        return heapq.nsmallest(num_blocks, leaves, key=self.key)


class LFUPolicy(LRUPolicy):
    name = "lfu"

    def key(self, node: TreeNode):
        return (node.hit_count, node.last_access, -node.depth)


class AsymPolicy(BaseEvictionPolicy):
    """Evict the unreferenced blocks of lowest ``reuse x recompute cost``.

    reuse: known where the waiting queue says so — a block that a queued request will match
    is kept over any block none will, and among those, the one needed latest goes first
    (Belady's rule over the visible future, as CachedAttention's scheduler-aware eviction);
    elsewhere estimated as ``(1 + hits) / (1 + age)``, age in tree ticks (one per lookup)
    since last use — frequency over recency, as Pensieve's cost / idle-time retention value.
    cost: the latency model's time to recompute the block's tokens at its position."""

    name = "asym"
    allows_holes = True

    def __init__(self, recompute_cost: RecomputeCost) -> None:
        self.recompute_cost = recompute_cost

    def value(self, node: TreeNode, clock: int, block_size: int) -> float:
        reuse = (1 + node.hit_count) / (1 + clock - node.last_access)
        return reuse * self.recompute_cost(node.depth * block_size, block_size)

    def select(self, tree: PrefixTree, num_blocks: int, upcoming: dict[int, int] | None = None) -> list[TreeNode]:
        upcoming = upcoming or {}

        def key(node: TreeNode):
            rank = upcoming.get(node.node_id)
            value = self.value(node, tree.clock, tree.block_size)
            return (0, 0, value) if rank is None else (1, -rank, value)

        candidates = (n for n in tree.nodes() if n.is_evictable)
        return heapq.nsmallest(num_blocks, candidates, key=key)


def make_policy(name: str, recompute_cost: RecomputeCost) -> BaseEvictionPolicy:
    if name == "lru":
        return LRUPolicy()
    if name == "lfu":
        return LFUPolicy()
    if name == "asym":
        return AsymPolicy(recompute_cost)
    raise ValueError(f"unknown cache policy {name!r}")
