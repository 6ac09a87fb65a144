"""Build the KV-cache manager the cache config names."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ember.kvcache.hash_manager import HashKVCacheManager
from ember.kvcache.interface import BaseKVCacheManager
from ember.kvcache.policies import make_policy
from ember.kvcache.tree_manager import TreeKVCacheManager

if TYPE_CHECKING:
    from ember.config import CacheConfig


def make_kv_cache_manager(
    config: CacheConfig, *, num_blocks: int, recompute_cost: Callable[..., float]
) -> BaseKVCacheManager:
    """``asym`` | ``lru`` | ``lfu`` (prefix tree), ``hash`` (vLLM-style), ``none`` (no reuse,
    also when prefix caching is off). ``recompute_cost``: the latency model's, for eviction."""
    policy = config.effective_policy
    if policy in ("hash", "none"):
        return HashKVCacheManager(num_blocks=num_blocks, block_size=config.block_size, enable_caching=policy == "hash")
    return TreeKVCacheManager(
        num_blocks=num_blocks, block_size=config.block_size, policy=make_policy(policy, recompute_cost)
    )
