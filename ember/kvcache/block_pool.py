"""Physical KV blocks: reference counts, a free queue in eviction order, and the map from
chained block hashes to cached full blocks (prefix caching)."""

from __future__ import annotations

from collections import OrderedDict

BlockKey = tuple[int, tuple[int, ...]]  # (parent block's hash, this block's token ids)


def chain_hash(parent_hash: int, token_ids: tuple[int, ...]) -> tuple[int, BlockKey]:
    """The hash of a full block, chained over every block before it.

    The key keeps the token ids, so a dict lookup compares them and a hash collision between
    different blocks cannot return wrong KV."""
    key = (parent_hash, token_ids)
    return hash(key), key


class BlockPool:
    """``num_blocks`` blocks. A block is in use (ref count > 0) or in the free queue.

    A free block may still hold a cached full block; it stays reusable by a prefix hit until
    the allocator takes it (lazy eviction). The free queue is ordered oldest-first, so the
    least recently freed cached block is evicted first."""

    def __init__(self, num_blocks: int, *, enable_caching: bool) -> None:
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.ref_counts = [0] * num_blocks
        self.free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.block_keys: list[BlockKey | None] = [None] * num_blocks
        self.cached: dict[BlockKey, int] = {}
        self.num_evicted = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    def lookup(self, key: BlockKey) -> int | None:
        return self.cached.get(key)

    def allocate(self, num_blocks: int) -> list[int]:
        if num_blocks > len(self.free_queue):
            raise RuntimeError(f"asked for {num_blocks} blocks, {len(self.free_queue)} free")
        block_ids = []
        for _ in range(num_blocks):
            block_id, _ = self.free_queue.popitem(last=False)
            self._uncache(block_id)
            self.ref_counts[block_id] = 1
            block_ids.append(block_id)
        return block_ids

    def touch(self, block_ids: list[int]) -> None:
        """Take a reference on cached blocks found by a prefix hit."""
        for block_id in block_ids:
            if self.ref_counts[block_id] == 0:
                del self.free_queue[block_id]
            self.ref_counts[block_id] += 1

    def free(self, block_ids: list[int]) -> None:
        """Drop one reference each; blocks reaching zero join the queue's tail in this order."""
        for block_id in block_ids:
            self.ref_counts[block_id] -= 1
            assert self.ref_counts[block_id] >= 0, f"block {block_id} freed twice"
            if self.ref_counts[block_id] == 0:
                self.free_queue[block_id] = None

    def cache(self, block_id: int, key: BlockKey) -> None:
        if not self.enable_caching or key in self.cached or self.block_keys[block_id] is not None:
            return
        self.cached[key] = block_id
        self.block_keys[block_id] = key

    def _uncache(self, block_id: int) -> None:
        key = self.block_keys[block_id]
        if key is not None:
            del self.cached[key]
            self.block_keys[block_id] = None
            self.num_evicted += 1

    def reset_cache(self) -> None:
        """Forget every cached block that no request holds."""
        for block_id in list(self.free_queue):
            self._uncache(block_id)

    def check_integrity(self, expected_refs: dict[int, int]) -> None:
        """``expected_refs``: block id -> number of live requests holding it."""
        for block_id in range(self.num_blocks):
            refs = self.ref_counts[block_id]
            want = expected_refs.get(block_id, 0)
            assert refs == want, f"block {block_id}: ref count {refs}, held by {want} requests"
            assert (refs == 0) == (block_id in self.free_queue), f"block {block_id} free state"
        for key, block_id in self.cached.items():
            assert self.block_keys[block_id] == key, f"block {block_id} cache key mismatch"
        num_keyed = sum(key is not None for key in self.block_keys)
        assert num_keyed == len(self.cached), "cache map and block keys disagree"
