"""tiered-kv-cache: the KV cache of the embedded engine, in blocks of tokens with prefix reuse."""

from tiered_kv_cache.blocks import BlockHash, block_hashes, root_hash
from tiered_kv_cache.manager import CacheStats, KVCacheManager, NoFreeBlocks
from tiered_kv_cache.pool import KVPool

__all__ = ["BlockHash", "CacheStats", "KVCacheManager", "KVPool", "NoFreeBlocks", "block_hashes", "root_hash"]
