"""vLLM-style prefix caching: a dict of chained block hashes over the blocks themselves.

A lookup stops at the first miss; freed blocks stay reusable until the allocator takes
them, oldest first (``--cache-policy hash``). AsymCache's tree manager is the alternative."""

from __future__ import annotations

from ember.core.request import Request
from ember.kvcache.block_pool import BlockPool, chain_hash
from ember.kvcache.interface import BaseKVCacheManager, PrefixMatch

_ROOT_HASH = 0


class HashKVCacheManager(BaseKVCacheManager):
    def __init__(self, *, num_blocks: int, block_size: int, enable_caching: bool) -> None:
        self.block_size = block_size
        self.pool = BlockPool(num_blocks, enable_caching=enable_caching)
        self.enable_caching = enable_caching
        self._blocks: dict[str, list[int]] = {}
        self._hashes: dict[str, list[int]] = {}  # chained hashes of the request's cached blocks
        self.num_queried_tokens = 0
        self.num_hit_tokens = 0

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def prefix_hit_rate(self) -> float:
        return self.num_hit_tokens / self.num_queried_tokens if self.num_queried_tokens else 0.0

    def block_table(self, request_id: str) -> list[int]:
        return self._blocks.get(request_id, [])

    def match_prefix(self, request: Request) -> PrefixMatch:
        """Longest run of cached full blocks at the start of the request's tokens.

        NOTE: stops one token short of the whole sequence: the last token must be run to get
        logits to sample from."""
        if not self.enable_caching:
            return PrefixMatch([], self.block_size)
        token_ids = request.all_token_ids
        max_blocks = (len(token_ids) - 1) // self.block_size
        block_ids, parent = [], _ROOT_HASH
        for i in range(max_blocks):
            chunk = tuple(token_ids[i * self.block_size : (i + 1) * self.block_size])
            parent, key = chain_hash(parent, chunk)
            block_id = self.pool.lookup(key)
            if block_id is None:
                break
            block_ids.append(block_id)
        self.num_queried_tokens += request.num_prompt_tokens
        self.num_hit_tokens += min(len(block_ids) * self.block_size, request.num_prompt_tokens)
        return PrefixMatch(block_ids, self.block_size)

    def allocate_slots(self, request: Request, num_new_tokens: int, hit: PrefixMatch | None = None) -> bool:
        """Reserve blocks so that ``num_new_tokens`` more tokens fit after the computed ones
        (and after ``hit`` for a new request). Returns False, changing nothing, if they do not."""
        held = self._blocks.get(request.request_id, [])
        hit_blocks = hit.block_ids if hit else []
        num_computed = request.num_computed_tokens  # NOTE: includes the hit (scheduler sets it)
        num_needed = -(-(num_computed + num_new_tokens) // self.block_size)
        num_new_blocks = max(0, num_needed - len(held) - len(hit_blocks))
        num_hit_free = sum(self.pool.ref_counts[b] == 0 for b in hit_blocks)
        if num_new_blocks + num_hit_free > self.pool.num_free_blocks:
            return False
        self.pool.touch(hit_blocks)
        blocks = self._blocks.setdefault(request.request_id, [])
        blocks.extend(hit_blocks)
        blocks.extend(self.pool.allocate(num_new_blocks))
        if hit_blocks:
            self._hashes[request.request_id] = self._chain(request.all_token_ids, len(hit_blocks))
        return True

    def cache_computed_blocks(self, request: Request) -> None:
        """Register the request's full, computed blocks in the prefix cache."""
        if not self.enable_caching:
            return
        hashes = self._hashes.setdefault(request.request_id, [])
        blocks = self._blocks[request.request_id]
        num_full = request.num_computed_tokens // self.block_size
        token_ids = request.all_token_ids
        for i in range(len(hashes), num_full):
            parent = hashes[-1] if hashes else _ROOT_HASH
            chunk = tuple(token_ids[i * self.block_size : (i + 1) * self.block_size])
            block_hash, key = chain_hash(parent, chunk)
            self.pool.cache(blocks[i], key)
            hashes.append(block_hash)

    def free(self, request: Request) -> None:
        blocks = self._blocks.pop(request.request_id, [])
        self._hashes.pop(request.request_id, None)
        # NOTE: tail blocks first, so that under pressure a prefix outlives its extensions.
        self.pool.free(blocks[::-1])

    def reset_prefix_cache(self) -> None:
        self.pool.reset_cache()

    def check_integrity(self, live_request_ids: set[str] | None = None) -> None:
        """Every block is free or owned by a live request; ref counts and the cache agree."""
        if live_request_ids is not None:
            stale = set(self._blocks) - live_request_ids
            assert not stale, f"blocks held by requests that are not live: {sorted(stale)}"
        refs: dict[int, int] = {}
        for blocks in self._blocks.values():
            assert len(set(blocks)) == len(blocks), "a request holds a block twice"
            for block_id in blocks:
                refs[block_id] = refs.get(block_id, 0) + 1
        self.pool.check_integrity(refs)

    def _chain(self, token_ids: list[int], num_blocks: int) -> list[int]:
        hashes, parent = [], _ROOT_HASH
        for i in range(num_blocks):
            chunk = tuple(token_ids[i * self.block_size : (i + 1) * self.block_size])
            parent, _ = chain_hash(parent, chunk)
            hashes.append(parent)
        return hashes
