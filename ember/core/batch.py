"""What one engine step carries: the scheduler's batch (plain data) in, the runner's logits out.

A batch is "run these tokens at these positions for these requests", whatever the reason:
prefill, chunked prefill, decode, recomputation after preemption, hole recomputation and
token-tree verification all take the ``ScheduledRequest`` shape. KV copies (speculation's
commit of an accepted path to its final slots) ride in the batch and are applied before its
tokens run, so a step is one message to every rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class KVCopy:
    """Copy every layer's K and V from cache slot ``src_slot`` to ``dst_slot``
    (slot = block id * block size + offset in the block).

    A batch's copies are applied in order before its tokens run; all sources are read before
    any destination is written, which equals copying one after another whenever no
    destination is a later copy's source (true of ``SerializedTree.kv_commit_moves``)."""

    src_slot: int
    dst_slot: int

    @classmethod
    def within(cls, block_ids: Sequence[int], block_size: int, src: int, dst: int) -> KVCopy:
        """A copy between storage indices ``src`` and ``dst`` of one request's block table."""
        return cls(storage_slot(block_ids, block_size, src), storage_slot(block_ids, block_size, dst))


def storage_slot(block_ids: Sequence[int], block_size: int, index: int) -> int:
    """The cache slot of a request's storage index ``index``."""
    return block_ids[index // block_size] * block_size + index % block_size


@dataclass(frozen=True)
class SerializedTree:
    """A token tree as one step runs it: node i is query i, at storage ``start_position + i``.

    Node 0 is the root (the request's last token, not yet in the cache); node order is
    topological (parent index < child index); a node's position is ``start_position +
    depth``. Plain lists for the scheduler; ``tree_mask`` builds the one tensor attention
    needs. Children of a node carry distinct tokens, so a token path names one node path.
    """

    token_ids: list[int]  # [Q], node order; node 0 is the root
    positions: list[int]  # [Q] start_position + depth
    parent_indices: list[int | None]  # [Q]; the root has None
    start_position: int  # the root's position = committed tokens before this step

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def kv_len(self) -> int:
        """Keys of the request this step: context plus every tree token."""
        return self.start_position + self.num_tokens

    @property
    def storage_indices(self) -> range:
        """Where node i's KV is written: ``start_position + i`` (``storage_index`` of
        ``build_attention_metadata``; it differs from the positions below the first branch)."""
        return range(self.start_position, self.kv_len)

    def depth(self, node: int) -> int:
        return self.positions[node] - self.start_position

    def tree_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """``[Q, Q]`` bool ancestor-or-self matrix, the ``tree_masks`` entry of
        ``ember.attention.build_attention_metadata``."""
        return ancestor_matrix(self.parent_indices, device=device)

    def accepted_nodes(self, token_ids: Sequence[int]) -> list[int]:
        """The node path (root excluded) that carries ``token_ids`` below the root; raises
        ValueError if the tree has no such path."""
        node, path = 0, []
        for token_id in token_ids:
            child = next(
                (
                    c
                    for c in range(node + 1, self.num_tokens)
                    if self.parent_indices[c] == node and self.token_ids[c] == token_id
                ),
                None,
            )
            if child is None:
                raise ValueError(f"token {token_id} is not a child of node {node}")
            path.append(child)
            node = child
        return path

    def kv_commit_moves(self, accepted_nodes: Sequence[int]) -> list[tuple[int, int]]:
        """``(src, dst)`` storage indices that move the accepted path's KV from tree slots
        (``start + node``) to final slots (``start + depth``); nodes already in place are
        skipped.

        Moves are ordered by depth, and dst < every later src (a node's index is at least its
        depth), so copying them one after another in place is safe. Storage from
        ``start + 1 + len(accepted_nodes)`` on holds rejected branches and can be released.
        """
        start = self.start_position
        moves = [(start + n, start + self.depth(n)) for n in accepted_nodes]
        return [(src, dst) for src, dst in moves if src != dst]


def ancestor_matrix(parent_indices: Sequence[int | None], device: torch.device | str = "cpu") -> torch.Tensor:
    """Parents in topological order (root: None) -> ``[Q, Q]`` bool, ``[i, j]`` true iff node j
    is node i or one of its ancestors."""
    q = len(parent_indices)
    mask = np.zeros((q, q), dtype=bool)
    for i, parent in enumerate(parent_indices):
        if parent is not None:
            if not 0 <= parent < i:
                raise ValueError(f"parent of node {i} must precede it, got {parent}")
            mask[i] = mask[parent]
        mask[i, i] = True
    return torch.from_numpy(mask).to(device)


@dataclass(frozen=True)
class ScheduledRequest:
    """Run ``token_ids`` at the positions of ``ranges`` (ascending ``[start, end)`` token
    ranges, in the request's own positions).

    Prefill, chunked prefill, decode, recomputation after preemption and hole recomputation
    all take this shape: a hole's range comes before the new tokens. Keys are the request's
    storage ``[0, kv_len)`` through ``block_ids``.

    A speculative step carries a ``tree`` instead: its nodes are the tokens, ``ranges`` is the
    one storage range they are written to, and positions are context length + depth."""

    request_id: str
    token_ids: list[int]
    ranges: list[tuple[int, int]]
    block_ids: list[int]
    sample: bool  # sample a next token after the last one
    prompt_logits: bool = False  # return logits for every token (prompt logprobs)
    tree: SerializedTree | None = None  # speculated tokens to verify (logits for every node)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def start_position(self) -> int:
        return self.ranges[0][0]

    @property
    def kv_len(self) -> int:
        return self.ranges[-1][1]

    def positions(self) -> range | list[int]:
        if self.tree is not None:
            return self.tree.positions
        if len(self.ranges) == 1:
            return range(*self.ranges[0])
        return [p for start, end in self.ranges for p in range(start, end)]

    def storage_indices(self) -> range | list[int]:
        """Where each token's KV is written: its position, except for tree nodes."""
        if self.tree is not None:
            return self.tree.storage_indices
        return self.positions()


@dataclass(frozen=True)
class Batch:
    requests: list[ScheduledRequest]
    preempted_ids: list[str] = field(default_factory=list)
    kv_copies: tuple[KVCopy, ...] = ()  # applied before the requests run

    @property
    def num_tokens(self) -> int:
        return sum(r.num_tokens for r in self.requests)

    @property
    def is_empty(self) -> bool:
        return not self.requests


@dataclass(frozen=True)
class RunnerOutput:
    """Logits rows of one step, on the engine's device, fp32."""

    sample_ids: list[str]  # request ids, one per row of ``logits``
    logits: torch.Tensor  # [len(sample_ids), vocab]
    prompt_logits: dict[str, tuple[int, torch.Tensor]]  # id -> (first position, [n, vocab])
    tree_logits: dict[str, torch.Tensor] = field(default_factory=dict)  # id -> [nodes, vocab]
