"""A radix tree over token blocks whose nodes may lose their KV and stay in place (holes).

Each node is one full block: its ``block_size`` token ids, its place (``depth``: it covers
positions ``[depth * block_size, (depth + 1) * block_size)``) and, unless it is a hole, the
KV block holding those tokens' keys and values. Evicting a node frees its block but keeps
the node, so the cached blocks after it stay reachable: a later match returns them with the
hole between, and only the hole is recomputed (same tokens, same positions: lossless).

    root -- [A] -- [B] -- [C]        A, C cached; B a hole (evicted)
                     \\-- [D]        match(A B C ...) -> [A, hole, C]

Invariants (``check_integrity``): a node's ``ref_count`` counts the live requests holding
it; only nodes with a block have refs; a hole has at least one cached descendant (useless
holes are pruned); ``num_cached_below`` counts the cached nodes strictly below each node.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(eq=False)
class TreeNode:
    tokens: tuple[int, ...]
    parent: TreeNode | None
    depth: int  # block index within the sequence; the root is -1
    block_id: int | None = None  # None: a hole, or the root
    ref_count: int = 0
    last_access: int = 0  # logical clock (ticks of the tree), not seconds
    hit_count: int = 0
    num_cached_below: int = 0
    children: dict[tuple[int, ...], TreeNode] = field(default_factory=dict)
    node_id: int = 0

    @property
    def is_hole(self) -> bool:
        return self.block_id is None and self.parent is not None

    @property
    def is_cached(self) -> bool:
        return self.block_id is not None

    @property
    def is_evictable(self) -> bool:
        return self.block_id is not None and self.ref_count == 0

    @property
    def is_leaf(self) -> bool:
        """No cached KV below: evicting it cannot create a hole."""
        return self.num_cached_below == 0


class PrefixTree:
    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.root = TreeNode((), None, -1)
        self.clock = 0
        self.num_cached = 0
        self._ids = itertools.count(1)
        self.by_block: dict[int, TreeNode] = {}

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def match(self, token_ids: list[int], max_blocks: int) -> list[TreeNode]:
        """Nodes along ``token_ids``' full blocks, holes included, up to ``max_blocks``;
        trailing holes are dropped (nothing cached after them to reuse)."""
        path, node = [], self.root
        for i in range(max_blocks):
            chunk = tuple(token_ids[i * self.block_size : (i + 1) * self.block_size])
            node = node.children.get(chunk)
            if node is None:
                break
            path.append(node)
        while path and path[-1].is_hole:
            path.pop()
        return path

    def child(self, parent: TreeNode, tokens: tuple[int, ...]) -> TreeNode:
        """The child of ``parent`` for ``tokens``, created as a hole if missing."""
        node = parent.children.get(tokens)
        if node is None:
            node = TreeNode(tokens, parent, parent.depth + 1, node_id=next(self._ids))
            parent.children[tokens] = node
        return node

    def attach(self, node: TreeNode, block_id: int) -> None:
        """Give a hole (or new node) its KV block."""
        assert node.block_id is None and node.parent is not None
        node.block_id = block_id
        self.by_block[block_id] = node
        self.num_cached += 1
        self._add_cached_below(node.parent, +1)

    def detach(self, node: TreeNode) -> int:
        """Evict ``node``'s KV: returns the freed block; the node stays as a hole unless
        nothing cached hangs below it, in which case it (and useless ancestors) go."""
        assert node.is_evictable, "only unreferenced cached nodes are evicted"
        block_id = node.block_id
        node.block_id = None
        del self.by_block[block_id]
        self.num_cached -= 1
        self._add_cached_below(node.parent, -1)
        self._prune(node)
        return block_id

    def touch(self, nodes: list[TreeNode], *, hit: bool) -> None:
        now = self.tick()
        for node in nodes:
            node.last_access = now
            node.hit_count += int(hit)

    def lock(self, nodes: list[TreeNode]) -> None:
        for node in nodes:
            assert node.is_cached, "only cached nodes are held"
            node.ref_count += 1

    def unlock(self, nodes: list[TreeNode]) -> None:
        for node in nodes:
            node.ref_count -= 1
            assert node.ref_count >= 0, "node unlocked more often than locked"

    def nodes(self) -> Iterator[TreeNode]:
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def _add_cached_below(self, node: TreeNode | None, delta: int) -> None:
        while node is not None:
            node.num_cached_below += delta
            node = node.parent

    def _prune(self, node: TreeNode) -> None:
        while node.parent is not None and node.block_id is None and node.num_cached_below == 0:
            parent = node.parent
            # NOTE: a hole with nothing cached below is dead weight; its subtree is all holes.
            del parent.children[node.tokens]
            node = parent

    def check_integrity(self) -> None:
        cached = 0

        def walk(node: TreeNode) -> int:
            nonlocal cached
            below = 0
            for tokens, child in node.children.items():
                assert child.parent is node and child.tokens == tokens
                assert child.depth == node.depth + 1 and len(tokens) == self.block_size
                sub = walk(child)
                below += sub + int(child.is_cached)
            assert node.num_cached_below == below, f"node {node.node_id}: cached-below count"
            if node.parent is not None:
                assert node.is_cached or below > 0, f"node {node.node_id}: a useless hole"
                assert node.is_cached or node.ref_count == 0, f"node {node.node_id}: a held hole"
            if node.is_cached:
                cached += 1
                assert self.by_block.get(node.block_id) is node, f"node {node.node_id}: block map"
            return below

        walk(self.root)
        assert cached == self.num_cached == len(self.by_block), "cached node count"
