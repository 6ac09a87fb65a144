"""What the scheduler asks of a KV-cache manager, and the typed answers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ember.core.request import Request


@dataclass(frozen=True)
class PrefixMatch:
    """Cached KV found for the start of a request's tokens.

    ``block_ids[i]`` holds tokens ``[i * block_size, (i + 1) * block_size)``, or is None for a
    hole: tokens whose KV was evicted and must be recomputed (``holes``, ascending token
    ranges). Everything after a hole stays valid at its original positions."""

    block_ids: list[int | None]
    block_size: int
    handle: Any = field(default=None, compare=False)  # manager-private

    @property
    def num_tokens(self) -> int:
        return len(self.block_ids) * self.block_size

    @property
    def num_cached_tokens(self) -> int:
        return sum(b is not None for b in self.block_ids) * self.block_size

    @property
    def holes(self) -> list[tuple[int, int]]:
        ranges: list[tuple[int, int]] = []
        for i, block_id in enumerate(self.block_ids):
            if block_id is None:
                start, end = i * self.block_size, (i + 1) * self.block_size
                if ranges and ranges[-1][1] == start:
                    ranges[-1] = (ranges[-1][0], end)
                else:
                    ranges.append((start, end))
        return ranges


EMPTY_MATCH = PrefixMatch([], 1)


class BaseKVCacheManager(ABC):
    """Blocks per request plus the reuse of cached KV across requests."""

    block_size: int

    @property
    @abstractmethod
    def num_blocks(self) -> int: ...

    @property
    @abstractmethod
    def num_free_blocks(self) -> int:
        """Blocks an allocation can get now (free, or cached and evictable)."""

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    @abstractmethod
    def match_prefix(self, request: Request) -> PrefixMatch:
        """Cached KV for the request's tokens; never covers its last token (it must run to
        give logits). Does not reserve anything."""

    @abstractmethod
    def allocate_slots(self, request: Request, num_new_tokens: int, match: PrefixMatch | None = None) -> bool:
        """Reserve blocks for ``num_new_tokens`` after the request's computed tokens (and, for
        a new request, take ``match``: its cached blocks and fresh blocks for its holes;
        the caller has already set ``num_computed_tokens`` to the match's end).
        Returns False and changes nothing if they do not fit."""

    @abstractmethod
    def cache_computed_blocks(self, request: Request) -> None:
        """Offer the request's full, computed blocks for reuse by later requests."""

    @abstractmethod
    def free(self, request: Request) -> None: ...

    @abstractmethod
    def block_table(self, request_id: str) -> list[int]: ...

    @abstractmethod
    def check_integrity(self, live_request_ids: set[str] | None = None) -> None:
        """Every block is free, cached, or owned by a live request; counts agree."""

    def reset_prefix_cache(self) -> None:
        """Forget cached KV that no request holds."""

    def observe_queue(self, waiting: Sequence[Request]) -> None:
        """Let eviction see the waiting queue (a live view; the scheduler owns it)."""
