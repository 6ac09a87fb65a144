"""Build the KV-cache manager an engine option names."""

from __future__ import annotations

from ember.kvcache.cost_model import LatencyModel
from ember.kvcache.interface import BaseKVCacheManager
from ember.kvcache.hash_manager import HashKVCacheManager
from ember.kvcache.policies import make_policy
from ember.kvcache.tree_manager import TreeKVCacheManager


def make_kv_cache_manager(
    policy: str, *, num_blocks: int, block_size: int, latency_model: LatencyModel
) -> BaseKVCacheManager:
    """``asym`` | ``lru`` | ``lfu`` (prefix tree), ``hash`` (vLLM-style), ``none`` (no reuse)."""
    if policy in ("hash", "none"):
        return HashKVCacheManager(num_blocks=num_blocks, block_size=block_size, enable_caching=policy == "hash")
    return TreeKVCacheManager(
        num_blocks=num_blocks,
        block_size=block_size,
        policy=make_policy(policy, latency_model.recompute_cost),
    )
