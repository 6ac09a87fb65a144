"""The draft-model proposer: a small causal LM with its own paged KV cache in Ember.

Per request the proposer keeps the tokens whose KV its cache holds. Each ``propose``:

    catch-up  one batched pass over every request's tokens the cache lacks (the new prompt,
              or the target's bonus token), which also scores the root's children
    expand    expansion config <k1, ..., km>: depth d adds k_d children to every frontier
              node; depths 1 .. m-1 each take one batched pass over the tree so far (tree
              attention, nodes at storage root + index), which scores the next frontier

Greedy requests get top-k children (deterministic picks). Sampled requests get children drawn
without replacement from the draft's distribution under the request's own temperature, top-k,
top-p and min-p, from a generator of their own: the q each draw records is what it was drawn
from (the draw invariant of ``ember.speculative.token_tree``), so verification stays lossless.

``commit`` keeps the draft KV of the accepted path (moved to its final slots); the rest of the
tree's slots are simply overwritten by the next tree.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ember.core.batch import Batch, KVCopy, ScheduledRequest, SerializedTree
from ember.core.sampling import sampling_probs
from ember.errors import InvalidInputError
from ember.kvcache.block_pool import BlockPool
from ember.runner.base import Runner
from ember.speculative.proposers import BaseProposer, DraftRequest
from ember.speculative.token_tree import TokenTree, expand_trees


@dataclass
class _DraftState:
    tokens: list[int] = field(default_factory=list)  # KV in the draft cache for these
    blocks: list[int] = field(default_factory=list)
    tree: TokenTree | None = None  # the last proposal
    num_run_nodes: int = 0  # its nodes with KV (all but the deepest level)
    generator: torch.Generator | None = None


class DraftModelProposer(BaseProposer):
    def __init__(
        self,
        runner: Runner,
        *,
        expansion: Sequence[int],
        proposer_id: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(proposer_id)
        if not expansion or any(k < 1 for k in expansion):
            raise InvalidInputError(f"expansion must be positive widths, got {list(expansion)}")
        self.runner = runner
        self.expansion = tuple(expansion)
        self.seed = seed
        self.block_size = runner.block_size
        self.block_pool = BlockPool(runner.num_blocks, enable_caching=False)
        self._states: dict[str, _DraftState] = {}
        self._pending_copies: list[KVCopy] = []  # accepted paths' KV moves, ride in the next run
        self._ids = itertools.count()

    @property
    def max_depth(self) -> int:
        return len(self.expansion)

    @property
    def max_tree_nodes(self) -> int:
        """Nodes of a full tree, root included."""
        total, width = 1, 1
        for k in self.expansion:
            width *= k
            total += width
        return total

    # ------------------------------------------------------------------ proposal
    def propose(self, requests: Sequence[DraftRequest]) -> list[TokenTree]:
        trees = [TokenTree(r.token_ids[-1]) for r in requests]
        active = [i for i, r in enumerate(requests) if r.max_depth > 0 and self._reserve(r)]
        if not active:
            return trees
        chosen = [requests[i] for i in active]

        def next_probs(depth: int, batch: list[int], frontiers: list[list[int]]) -> list[torch.Tensor]:
            batch_requests = [chosen[b] for b in batch]
            if depth == 1:  # the catch-up pass scores the roots' children
                probs = self._catch_up(batch_requests)
                return [probs[row : row + 1] for row in range(len(batch))]
            return self._score(batch_requests, [trees[active[b]] for b in batch], frontiers)

        expand_trees(
            [trees[i] for i in active],
            self.expansion,
            next_probs,
            max_depths=[r.max_depth for r in chosen],
            generators=[self._states[r.request_id].generator for r in chosen],
            proposer=self.proposer_id,
        )
        for i, r in zip(active, chosen):
            state = self._states[r.request_id]
            state.tree = trees[i]
            state.num_run_nodes = sum(d < min(self.max_depth, r.max_depth) for d in trees[i].depths)
        return trees

    def commit(self, request_id: str, token_ids: Sequence[int]) -> None:
        """The target accepted ``token_ids`` after the root (bonus token excluded): keep the
        draft KV this proposer has for them (moved to their final slots in the next run)."""
        state = self._states.get(request_id)
        if state is None or state.tree is None:
            return
        tree, accepted, node = state.tree, [], 0
        for token_id in token_ids:
            child = tree.child(node, token_id)
            if child is None or child >= state.num_run_nodes:
                break
            accepted.append(child)
            node = child
        start = len(state.tokens) - 1  # the root's storage index
        for src, dst in tree.serialize(start).kv_commit_moves(accepted):
            self._pending_copies.append(KVCopy.within(state.blocks, self.block_size, src, dst))
        state.tokens.extend(tree.token_ids[n] for n in accepted)
        state.tree = None

    def release(self, request_id: str) -> None:
        state = self._states.pop(request_id, None)
        if state is not None:
            self.block_pool.free(state.blocks)

    # ----------------------------------------------------------------- internals
    def _reserve(self, request: DraftRequest) -> bool:
        """Sync the request's state with its tokens and hold blocks for them and a full tree;
        False (state dropped: no speculation this step) when the draft cache is full."""
        state = self._states.get(request.request_id)
        if state is None:
            state = self._states[request.request_id] = _DraftState()
        tokens = request.token_ids
        keep = len(state.tokens)
        if keep == len(tokens) and state.tokens == list(tokens):
            state.tokens.pop()  # proposed again without progress (e.g. after a preemption)
            keep -= 1
        if keep > len(tokens) - 1 or state.tokens != list(tokens[:keep]):
            keep = 0  # NOTE: never expected (tokens only grow); recompute rather than guess
            state.tokens = []
        state.tree = None
        needed = -(-(len(tokens) + self.max_tree_nodes) // self.block_size) - len(state.blocks)
        if needed > self.block_pool.num_free_blocks:
            self.release(request.request_id)
            return False
        if needed > 0:
            state.blocks.extend(self.block_pool.allocate(needed))
        if state.generator is None and request.sampling is not None and not request.sampling.params.is_greedy:
            seed = request.sampling.params.seed
            seed = self.seed * 7919 + next(self._ids) if seed is None else seed
            # NOTE: a stream of its own. Seeded like the request's sampler, the draft would
            # replay the target's random numbers: drafts correlated with the tokens verification
            # draws break the draw invariant (the output is then biased; a test shows it).
            mixed = (seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019 * (self.proposer_id + 1)) % 2**63
            state.generator = torch.Generator(device=self.runner.device).manual_seed(mixed)
        return True

    def _run(self, items: list[ScheduledRequest]):
        copies, self._pending_copies = tuple(self._pending_copies), []
        return self.runner.run(Batch(items, kv_copies=copies))

    def _catch_up(self, requests: list[DraftRequest]) -> torch.Tensor:
        items = []
        for r in requests:
            state = self._states[r.request_id]
            start = len(state.tokens)
            new = list(r.token_ids[start:])
            items.append(ScheduledRequest(r.request_id, new, [(start, start + len(new))], state.blocks, sample=True))
            state.tokens.extend(new)
        return self._to_probs(self._run(items).logits, requests)

    def _score(self, requests, trees, frontiers) -> list[torch.Tensor]:
        """One pass over each request's tree below the root; probs at its frontier nodes."""
        items = []
        for r, tree in zip(requests, trees):
            state = self._states[r.request_id]
            root = len(state.tokens) - 1
            sub = SerializedTree(
                token_ids=tree.token_ids[1:],
                positions=[root + d for d in tree.depths[1:]],
                parent_indices=[p - 1 if p else None for p in tree.parents[1:]],
                start_position=root + 1,
            )
            items.append(
                ScheduledRequest(r.request_id, sub.token_ids, [(root + 1, sub.kv_len)], state.blocks, True, tree=sub)
            )
        out = self._run(items).tree_logits
        return [
            self._to_probs(out[r.request_id][[n - 1 for n in frontier]], [r] * len(frontier))
            for r, frontier in zip(requests, frontiers)
        ]

    def _to_probs(self, logits: torch.Tensor, requests: Sequence[DraftRequest]) -> torch.Tensor:
        """The draft's distributions: a sampled request's under its own temperature, top-k,
        top-p and min-p; a greedy request's plain softmax (only ranked, for top-k picks)."""
        probs = logits.float().softmax(dim=-1)
        rows = [i for i, r in enumerate(requests) if r.sampling is not None and not r.sampling.params.is_greedy]
        if rows:
            probs[rows] = sampling_probs(logits[rows].float(), [requests[i].sampling.params for i in rows])
        return probs
