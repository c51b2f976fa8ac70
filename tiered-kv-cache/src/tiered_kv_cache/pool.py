"""The pool: the arrays that hold every block's keys and values, for every layer.

Layout [n_layer, n_kv_head, num_blocks * block_size, head_dim]: within a layer and kv head, a block's slots are one
contiguous run, and so are the slots of consecutive blocks, so that attention over a sequence whose blocks happen to
be consecutive reads a view and copies nothing. Slot s of the flat axis is position s % block_size of block
s // block_size. The arrays are made with `zeros`, which the OS backs lazily: a large pool costs memory only as its
blocks are first written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class KVPool:
    """Keys and values of `num_blocks` blocks of `block_size` positions, for every layer and kv head."""

    def __init__(self, n_layer: int, n_kv_head: int, head_dim: int, num_blocks: int, block_size: int = 16,
                 dtype: Any = np.float32, xp: Any = np) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.xp = xp
        shape = (n_layer, n_kv_head, num_blocks * block_size, head_dim)
        self.k = xp.zeros(shape, dtype=dtype)  # [L, Hkv, slots, hd]
        self.v = xp.zeros(shape, dtype=dtype)  # [L, Hkv, slots, hd]
        self.block_shape = (2, n_layer, n_kv_head, block_size, head_dim)  # one block's keys and values, as moved
        self.block_nbytes = self.block_bytes(n_layer, n_kv_head, head_dim, block_size, self.k.itemsize)

    @staticmethod
    def block_bytes(n_layer: int, n_kv_head: int, head_dim: int, block_size: int = 16, itemsize: int = 4) -> int:
        """Bytes one block takes across all layers, keys and values."""
        return 2 * n_layer * n_kv_head * block_size * head_dim * itemsize

    def slots(self, table: Sequence[int], start: int, end: int) -> np.ndarray:
        """Flat slot indices of positions [start, end) of a sequence with block table `table`."""
        positions = np.arange(start, end)  # [T]
        blocks = np.asarray(table, dtype=np.int64)[positions // self.block_size]  # [T]
        return blocks * self.block_size + positions % self.block_size  # [T]

    def write(self, layer: int, slots: np.ndarray, k: Any, v: Any) -> None:
        """Store new keys and values ([T, Hkv, hd] each) of one layer at `slots`."""
        self.k[layer][:, slots] = k.transpose(1, 0, 2)  # [Hkv, T, hd]
        self.v[layer][:, slots] = v.transpose(1, 0, 2)  # [Hkv, T, hd]

    def read(self, layer: int, table: Sequence[int], num_tokens: int) -> tuple[Any, Any]:
        """Keys and values of a sequence's first `num_tokens` positions in one layer, head-major ([Hkv, S, hd] each):
        views when its blocks are consecutive in the pool, else gathered copies."""
        used = -(-num_tokens // self.block_size)  # blocks holding the positions
        first = table[0] if used else 0
        if all(table[i] == first + i for i in range(used)):
            start = first * self.block_size
            return self.k[layer, :, start : start + num_tokens], self.v[layer, :, start : start + num_tokens]
        slots = self.slots(table, 0, num_tokens)  # [S]
        return self.k[layer][:, slots], self.v[layer][:, slots]

    def read_block(self, block_id: int) -> np.ndarray:
        """A host copy of one block's keys and values in every layer ([2, L, Hkv, block_size, hd]), to move it to
        a lower tier."""
        bs = self.block_size
        kv = self.xp.stack([self.k[:, :, block_id * bs : (block_id + 1) * bs],
                            self.v[:, :, block_id * bs : (block_id + 1) * bs]])  # [2, L, Hkv, bs, hd]
        return kv if self.xp is np else self.xp.asnumpy(kv)

    def write_block(self, block_id: int, data: np.ndarray) -> None:
        """Put a block's keys and values ([2, L, Hkv, block_size, hd], from `read_block`) back into block `block_id`."""
        bs = self.block_size
        kv = self.xp.asarray(data)
        self.k[:, :, block_id * bs : (block_id + 1) * bs] = kv[0]
        self.v[:, :, block_id * bs : (block_id + 1) * bs] = kv[1]

    def copy_block(self, src: int, dst: int) -> None:
        """Copy block `src` into block `dst` in every layer (copy-on-write)."""
        bs = self.block_size
        self.k[:, :, dst * bs : (dst + 1) * bs] = self.k[:, :, src * bs : (src + 1) * bs]
        self.v[:, :, dst * bs : (dst + 1) * bs] = self.v[:, :, src * bs : (src + 1) * bs]
