"""tiered-kv-cache: the KV cache of the embedded engine, in blocks of tokens with prefix reuse over three tiers."""

from tiered_kv_cache.blocks import BlockHash, block_hashes, root_hash
from tiered_kv_cache.manager import KVCacheManager, NoFreeBlocks, Prefix
from tiered_kv_cache.pool import KVPool
from tiered_kv_cache.tiers import TIERS, CacheStats, TierConfig, TierSizes

__all__ = ["TIERS", "BlockHash", "CacheStats", "KVCacheManager", "KVPool", "NoFreeBlocks", "Prefix", "TierConfig",
           "TierSizes", "block_hashes", "root_hash"]
