"""Proposers: where a request's token tree comes from.

``BaseProposer`` is the one interface: one ``TokenTree`` per request, rooted at the request's
last token. A draft-model proposer (expansion config ``<k1, ..., km>``, see
``token_tree.expand_trees``) and the model-free n-gram proposer below both implement it; trees
from several proposers combine with ``token_tree.merge_trees``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ember.core.sampling import SamplingState
from ember.speculative.token_tree import TokenTree


@dataclass(frozen=True)
class DraftRequest:
    """What a proposer sees of one running request."""

    request_id: str  # stable across steps: a stateful proposer keys its caches by it
    token_ids: Sequence[int]  # prompt + output so far; the last one is the tree's root
    max_depth: int  # deepest node allowed (0: propose nothing), e.g. by max_tokens/context left
    sampling: SamplingState | None = None  # the request's sampling (None: greedy)


class BaseProposer(ABC):
    """Proposes token trees. ``proposer_id`` tags every draw it makes, so merged trees keep
    who proposed what (and merge order, by the engine's list of proposers, is fixed)."""

    def __init__(self, proposer_id: int = 0) -> None:
        self.proposer_id = proposer_id

    @abstractmethod
    def propose(self, requests: Sequence[DraftRequest]) -> list[TokenTree]:
        """One tree per request, in order, each rooted at ``token_ids[-1]`` and no deeper than
        ``max_depth``. A root-only tree means "nothing to propose": run a plain decode.

        Every draw must keep the draw invariant of ``ember.speculative.token_tree`` (record the q a
        token was sampled from, or None for a deterministic pick)."""

    def commit(self, request_id: str, token_ids: Sequence[int]) -> None:
        """The target accepted ``token_ids`` of the last proposal (path below the root, bonus
        token excluded): a stateful proposer keeps what it computed for them."""

    def release(self, request_id: str) -> None:
        """The request finished or was aborted: drop any state kept for it."""


@dataclass(frozen=True, kw_only=True)
class NgramConfig:
    """Prompt lookup (vLLM's ``ngram`` method): match the last n tokens earlier in the request.

    min_n / max_n: n-gram sizes tried, longest first (a longer match predicts better).
    num_tokens: tokens proposed after a match (the depth of a branch).
    num_branches: distinct continuations kept, from the most recent matches; more than one
        makes a tree.
    """

    min_n: int = 1
    max_n: int = 4
    num_tokens: int = 5
    num_branches: int = 1

    def __post_init__(self) -> None:
        for name in ("min_n", "num_tokens", "num_branches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_n < self.min_n:
            raise ValueError(f"max_n must be >= min_n ({self.min_n}), got {self.max_n}")


class NgramProposer(BaseProposer):
    """Model-free: continuations of earlier occurrences of the request's last n tokens, as
    deterministic picks (no q: lossless under both verification rules)."""

    def __init__(self, config: NgramConfig | None = None, proposer_id: int = 0) -> None:
        super().__init__(proposer_id)
        self.config = config or NgramConfig()

    def propose(self, requests: Sequence[DraftRequest]) -> list[TokenTree]:
        trees = []
        for request in requests:
            tree = TokenTree(request.token_ids[-1])
            c = self.config
            num_tokens = min(c.num_tokens, request.max_depth)
            if num_tokens > 0:
                for tokens in find_continuations(
                    request.token_ids,
                    min_n=c.min_n,
                    max_n=c.max_n,
                    num_tokens=num_tokens,
                    num_branches=c.num_branches,
                ):
                    tree.add_path(tokens, proposer=self.proposer_id)
            trees.append(tree)
        return trees


def find_continuations(
    token_ids: Sequence[int], *, min_n: int, max_n: int, num_tokens: int, num_branches: int
) -> list[list[int]]:
    """Up to ``num_branches`` distinct continuations (each up to ``num_tokens`` tokens) of
    earlier occurrences of the sequence's last n tokens; longest n first, then most recent
    occurrence first. The suffix itself is not an occurrence. Continuations never prefix each
    other (a prefix adds no node to a tree): an older match that extends one cut short by the
    end of the sequence replaces it."""
    tokens = np.asarray(token_ids, dtype=np.int64)
    length = len(tokens)
    found: list[list[int]] = []
    for n in range(min(max_n, length - 1), min_n - 1, -1):
        # windows starting at 0 .. length - n - 1: each has at least one token after it
        windows = np.lib.stride_tricks.sliding_window_view(tokens[:-1], n)
        starts = np.flatnonzero((windows == tokens[length - n :]).all(axis=1))
        for start in starts[::-1]:
            new = tokens[start + n : start + n + num_tokens].tolist()
            if any(f[: len(new)] == new for f in found):
                continue  # already in the tree
            extended = [i for i, f in enumerate(found) if new[: len(f)] == f]
            if extended:
                found[extended[0]] = new
            elif len(found) < num_branches:
                found.append(new)
            if len(found) == num_branches and all(len(f) == num_tokens for f in found):
                return found
    return found
