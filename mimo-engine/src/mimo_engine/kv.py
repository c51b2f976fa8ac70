"""The KV cache of one sequence: the interface the engine computes against, and a plain in-memory implementation.

The tiered-kv-cache issue implements the same interface with paged blocks in HBM -> DRAM -> NVMe and prefix reuse;
the names follow vLLM's block vocabulary (`block_size`, `num_blocks`). `read` gives keys and values token-major,
`[positions, n_kv_head, head_dim]` per layer; `read_heads` gives them head-major, `[n_kv_head, positions, head_dim]`,
the layout attention reads: each head's positions are then one contiguous run of memory rather than head_dim-long
pieces n_kv_head * head_dim apart, which the per-head products of a decode step stream faster from DRAM.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from mimo_engine.xp import xp

DEFAULT_BLOCK_SIZE = 16


class KVCache(ABC):
    """Keys and values of every cached position of one sequence, layer by layer.

    A forward pass appends the new positions to layer 0, reads layer 0, then layer 1, and so on; `num_tokens` counts
    the positions that every layer holds, so it advances once the last layer has appended.
    """

    block_size: int

    @property
    @abstractmethod
    def num_tokens(self) -> int:
        """Positions cached in every layer."""

    @property
    @abstractmethod
    def num_blocks(self) -> int:
        """Blocks of `block_size` positions this cache holds allocated."""

    @abstractmethod
    def append(self, layer: int, k, v) -> None:
        """Store `k`, `v` ([T, n_kv_head, head_dim]) as the next T positions of `layer`."""

    @abstractmethod
    def read(self, layer: int) -> tuple:
        """All cached keys and values of `layer`, each [S, n_kv_head, head_dim]; views valid until the next append."""

    def read_heads(self, layer: int) -> tuple:
        """`read` head-major: each [n_kv_head, S, head_dim]; an implementation that stores this layout returns views."""
        k, v = self.read(layer)  # [S, n_kv_head, head_dim] each
        return k.transpose(1, 0, 2), v.transpose(1, 0, 2)  # [n_kv_head, S, head_dim] each

    @abstractmethod
    def truncate(self, num_tokens: int) -> None:
        """Drop every position from `num_tokens` on (rollback of rejected speculative tokens)."""

    @abstractmethod
    def fork(self) -> KVCache:
        """An independent copy that shares nothing mutable with this one (n > 1 choices, branches)."""


class InMemoryKVCache(KVCache):
    """One preallocated array per sequence for keys and one for values, grown by doubling (amortised O(1) append).
    They are head-major, so that `read_heads` (what the forward pass reads) returns views."""

    def __init__(self, n_layer: int, n_kv_head: int, head_dim: int, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        self.block_size = block_size
        self._k = xp.empty((n_layer, n_kv_head, 0, head_dim), dtype=xp.float32)  # [L, n_kv, capacity, hd]
        self._v = xp.empty_like(self._k)  # [L, n_kv, capacity, hd]
        self._lengths = [0] * n_layer  # positions held per layer; they differ only in the middle of a forward pass

    @property
    def num_tokens(self) -> int:
        return min(self._lengths)

    @property
    def num_blocks(self) -> int:
        return self._k.shape[2] // self.block_size

    def append(self, layer: int, k, v) -> None:
        start = self._lengths[layer]
        end = start + k.shape[0]
        if end > self._k.shape[2]:
            self._grow(end)
        self._k[layer, :, start:end] = k.transpose(1, 0, 2)  # [n_kv, T, hd]
        self._v[layer, :, start:end] = v.transpose(1, 0, 2)  # [n_kv, T, hd]
        self._lengths[layer] = end

    def read(self, layer: int) -> tuple:
        k, v = self.read_heads(layer)  # [n_kv, S, hd] each
        return k.transpose(1, 0, 2), v.transpose(1, 0, 2)  # [S, n_kv, hd] each

    def read_heads(self, layer: int) -> tuple:
        end = self._lengths[layer]
        return self._k[layer, :, :end], self._v[layer, :, :end]

    def truncate(self, num_tokens: int) -> None:
        if not 0 <= num_tokens <= self.num_tokens:
            raise ValueError(f"cannot truncate a cache of {self.num_tokens} tokens to {num_tokens}")
        self._lengths = [num_tokens] * len(self._lengths)

    def fork(self) -> InMemoryKVCache:
        n_layer, n_kv_head, _, head_dim = self._k.shape
        twin = InMemoryKVCache(n_layer, n_kv_head, head_dim, self.block_size)
        used = max(self._lengths)
        twin._k = self._k[:, :, :used].copy()
        twin._v = self._v[:, :, :used].copy()
        twin._lengths = list(self._lengths)
        return twin

    def _grow(self, needed: int) -> None:
        blocks = -(-max(needed, 2 * self._k.shape[2]) // self.block_size)  # at least double: amortised growth
        used = max(self._lengths)
        for name in ("_k", "_v"):
            old = getattr(self, name)
            new = xp.empty((*old.shape[:2], blocks * self.block_size, old.shape[3]), dtype=old.dtype)
            new[:, :, :used] = old[:, :, :used]
            setattr(self, name, new)
