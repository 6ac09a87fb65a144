"""One request's token tree: the speculated continuations the target verifies in one pass.

Node 0 is the root: the request's last committed token. Its KV is not in the cache yet (Ember
runs a request's last token in the step that samples after it), so the root runs with the tree,
as in SpecInfer/FlexFlow ("all tree tokens plus the last verified token in one kernel"). That
one pass gives the target's distribution at every node, the root's included: the logits row of
node u scores u's children (and the bonus token when the walk stops at u).

    storage    [0, start)          committed context; start = the root's position
               [start, start + Q)  node i at storage start + i, in node order
    position   start + depth(i)    so the root sits at start, already in its final slot

Nodes are numbered in insertion order. A child is always added after its parent, so node order
is topological (parent index < child index) and is the serialized order.

Each node keeps its *draws*: the children proposed at it, in the order verification tries them.
A draw records the distribution q its token was sampled from; ``None`` means a deterministic
pick (top-k, n-gram), i.e. q is a point mass at the token. Multi-step speculative sampling
(``ember.speculative.verify``, where the one-line proof is) is lossless whenever

    # NOTE (the draw invariant): given the tree above a node and the earlier draws at it (in
    # this order, by any proposer), each draw's token is distributed as its recorded q.

Independent proposers, i.i.d. draws, draws without replacement (q renormalised without the
earlier tokens, see ``add_sampled_children``) and deterministic picks all satisfy it. Recording
a soft q for a deterministic top-k pick breaks it (tests show the output is then biased).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import torch

from ember.core.batch import SerializedTree


class Draw(NamedTuple):
    """One proposal of a child at a node."""

    child: int  # node index of the proposed token
    token_id: int
    proposer: int  # which proposer made it
    probs: torch.Tensor | None  # [V] what the token was drawn from; None = deterministic pick


class TokenTree:
    """Token tree of one request. Identical token paths are one node (children are unique by
    token); every proposal that reached a node is kept as a draw at its parent."""

    def __init__(self, root_token_id: int) -> None:
        self.token_ids: list[int] = [root_token_id]
        self.parents: list[int | None] = [None]
        self.depths: list[int] = [0]
        self.draws: list[list[Draw]] = [[]]  # per node: proposals of its children, in order
        self.proposer_ids: list[set[int]] = [set()]  # per node: who proposed it
        self._children: list[dict[int, int]] = [{}]  # per node: token id -> child node

    @classmethod
    def from_paths(cls, root_token_id: int, paths: Iterable[Sequence[int]], *, proposer: int = 0) -> TokenTree:
        """A tree of deterministic picks: every path (root excluded) becomes a branch."""
        tree = cls(root_token_id)
        for path in paths:
            tree.add_path(path, proposer=proposer)
        return tree

    @property
    def root_token_id(self) -> int:
        return self.token_ids[0]

    @property
    def num_nodes(self) -> int:
        return len(self.token_ids)

    @property
    def max_depth(self) -> int:
        return max(self.depths)

    @property
    def max_draws(self) -> int:
        """Most draws at any one node."""
        return max(len(d) for d in self.draws)

    def add_child(self, parent: int, token_id: int, *, proposer: int = 0, probs: torch.Tensor | None = None) -> int:
        """Record a proposal of ``token_id`` after ``parent``; returns the child's node index
        (an existing node when the token is already a child: paths merge).

        ``probs`` ``[V]``: the distribution the token was drawn from (kept by reference; a row
        of a batched tensor is fine), or None for a deterministic pick. A deterministic pick of
        a token that already has one at this node adds no draw: it could only be rejected.
        """
        num_nodes = len(self.token_ids)
        if not 0 <= parent < num_nodes:
            raise ValueError(f"parent must be a node index in [0, {num_nodes}), got {parent}")
        child = self._children[parent].get(token_id)
        if child is None:
            child = num_nodes
            self.token_ids.append(token_id)
            self.parents.append(parent)
            self.depths.append(self.depths[parent] + 1)
            self.draws.append([])
            self.proposer_ids.append(set())
            self._children.append({})
            self._children[parent][token_id] = child
        is_repeat_pick = probs is None and any(d.probs is None and d.token_id == token_id for d in self.draws[parent])
        if not is_repeat_pick:
            self.draws[parent].append(Draw(child, token_id, proposer, probs))
        self.proposer_ids[child].add(proposer)
        return child

    def add_sampled_children(
        self, parent: int, token_ids: Sequence[int], probs: torch.Tensor, *, proposer: int = 0
    ) -> list[int]:
        """Record tokens drawn one after another *without replacement* from ``probs`` ``[V]``.

        Draw j was sampled from probs with the earlier tokens removed and renormalised, so that
        is the q it records (draw invariant). The first draw keeps ``probs`` by reference.
        """
        if len(set(token_ids)) != len(token_ids):
            raise ValueError(f"token_ids drawn without replacement must differ, got {token_ids}")
        q, children = probs, []
        for j, token_id in enumerate(token_ids):
            if j:
                q = q.clone()
                q[token_ids[j - 1]] = 0
                q = q / q.sum()
            children.append(self.add_child(parent, token_id, proposer=proposer, probs=q))
        return children

    def add_path(self, token_ids: Sequence[int], *, parent: int = 0, proposer: int = 0) -> int:
        """Deterministic picks along a path below ``parent``; returns the last node."""
        node = parent
        for token_id in token_ids:
            node = self.add_child(node, token_id, proposer=proposer)
        return node

    def child(self, node: int, token_id: int) -> int | None:
        """The child of ``node`` carrying ``token_id``, if any."""
        return self._children[node].get(token_id)

    def children(self, node: int) -> list[int]:
        return list(self._children[node].values())

    def path(self, node: int) -> list[int]:
        """Node indices from the root to ``node``, both included."""
        nodes = [node]
        while (parent := self.parents[nodes[-1]]) is not None:
            nodes.append(parent)
        return nodes[::-1]

    def path_token_ids(self, node: int) -> list[int]:
        """Tokens from the root to ``node``, both included."""
        return [self.token_ids[n] for n in self.path(node)]

    def leaves(self) -> list[int]:
        return [n for n in range(self.num_nodes) if not self._children[n]]

    def paths(self) -> list[list[int]]:
        """Token paths root-to-leaf, root excluded (empty list for a root-only tree)."""
        return [self.path_token_ids(leaf)[1:] for leaf in self.leaves()]

    def serialize(self, start_position: int) -> SerializedTree:
        """The step's tree tokens, with the root at ``start_position`` (committed tokens)."""
        return SerializedTree(
            token_ids=list(self.token_ids),
            positions=[start_position + d for d in self.depths],
            parent_indices=list(self.parents),
            start_position=start_position,
        )


def merge_trees(trees: Sequence[TokenTree]) -> TokenTree:
    """SpecInfer's merge (Def. 3.2): the union of the trees' token paths, shared prefixes as one
    node. Every draw is kept with its proposer and q; at a node, draws of ``trees[0]`` come
    first, then ``trees[1]``'s, and so on: an order fixed before any token is seen, so
    independent proposers keep the draw invariant."""
    if not trees:
        raise ValueError("merge_trees needs at least one tree")
    roots = {t.root_token_id for t in trees}
    if len(roots) != 1:
        raise ValueError(f"trees must share the root token, got roots {sorted(roots)}")
    merged = TokenTree(trees[0].root_token_id)
    for tree in trees:
        node_map = {0: 0}
        # NOTE: node order is topological, so a node is mapped before its draws are replayed.
        for node in range(tree.num_nodes):
            for d in tree.draws[node]:
                node_map[d.child] = merged.add_child(node_map[node], d.token_id, proposer=d.proposer, probs=d.probs)
    return merged


def expand_trees(
    trees: Sequence[TokenTree],
    expansion: Sequence[int],
    next_probs: Callable[[int, list[int], list[list[int]]], Sequence[torch.Tensor]],
    *,
    max_depths: Sequence[int],
    generators: Sequence[torch.Generator | None],
    proposer: int = 0,
) -> None:
    """SpecInfer's expansion-based trees for expansion config ``<k1, ..., km>``, a batch at a
    time: grows each root-only tree in ``trees`` in place.

    At depth d every frontier node of tree b (while ``d <= max_depths[b]``) gets ``k_d``
    children. ``next_probs(d, batch, frontiers)`` returns, for the trees ``batch`` (indices
    into ``trees``) and their frontier nodes, the draft's distributions ``[F_b, V]`` at those
    nodes (one batched draft pass per depth). A tree with a generator gets its children
    sampled without replacement (soft draws: good acceptance under stochastic verification);
    without one, the top-k (deterministic picks, still lossless, best for greedy
    verification). Zero-probability tokens are never proposed.
    """
    if any(k < 1 for k in expansion):
        raise ValueError(f"expansion must hold positive widths, got {list(expansion)}")
    frontiers = {b: [0] for b in range(len(trees))}
    for depth, k in enumerate(expansion, start=1):
        batch = [b for b in frontiers if depth <= max_depths[b]]
        if not batch:
            return
        probs_of = next_probs(depth, batch, [frontiers[b] for b in batch])
        frontiers = {
            b: _add_expansion(trees[b], frontiers[b], probs, k, generators[b], proposer)
            for b, probs in zip(batch, probs_of, strict=True)
        }


def expand_tree(
    root_token_id: int,
    expansion: Sequence[int],
    next_probs: Callable[[list[list[int]]], torch.Tensor],
    *,
    proposer: int = 0,
    generator: torch.Generator | None = None,
) -> TokenTree:
    """``expand_trees`` for one tree: ``next_probs`` maps the frontier's token paths (root
    first) to draft probabilities ``[F, V]``."""
    tree = TokenTree(root_token_id)
    expand_trees(
        [tree],
        expansion,
        lambda depth, batch, frontiers: [next_probs([tree.path_token_ids(n) for n in frontiers[0]])],
        max_depths=[len(expansion)],
        generators=[generator],
        proposer=proposer,
    )
    return tree


def _add_expansion(
    tree: TokenTree, frontier: list[int], probs: torch.Tensor, k: int, generator, proposer: int
) -> list[int]:
    """``k`` children for every frontier node (``probs`` ``[F, V]``); returns the new frontier."""
    widths = (probs > 0).sum(dim=-1).clamp_max(k).tolist()  # one host sync per depth
    children: list[int] = []
    if generator is None:
        top = probs.topk(min(k, probs.shape[-1]), dim=-1).indices.tolist()
        for node, tokens, width in zip(frontier, top, widths):
            children += [tree.add_child(node, t, proposer=proposer) for t in tokens[:width]]
        return children
    for node, q, width in zip(frontier, probs, widths):
        q = q / q.sum()  # NOTE: a draw records a true distribution
        tokens = torch.multinomial(q, width, replacement=False, generator=generator)
        children += tree.add_sampled_children(node, tokens.tolist(), q, proposer=proposer)
    return children
