"""Block identity: a full block of tokens is named by a hash chained through every block before it.

A block's hash covers its parent's hash and its own token ids, and the chain starts from the model's fingerprint,
so equal hashes mean the same tokens at the same positions after the same prefix, for the same model and KV layout:
only then may computed keys and values be reused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

BlockHash = bytes  # 16 bytes of BLAKE2b


def root_hash(fingerprint: str) -> BlockHash:
    """The chain's start: the model fingerprint (weights hash, KV dtype, block size, tokenizer) as a hash."""
    return hashlib.blake2b(fingerprint.encode(), digest_size=16).digest()


def chain(parent: BlockHash, token_ids: Sequence[int]) -> BlockHash:
    """The hash of a block of `token_ids` that follows the block hashed `parent`."""
    return hashlib.blake2b(parent + np.asarray(token_ids, dtype=np.int64).tobytes(), digest_size=16).digest()


def block_hashes(root: BlockHash, token_ids: Sequence[int], block_size: int, start: int = 0,
                 parent: BlockHash | None = None) -> list[BlockHash]:
    """Hashes of the full blocks of `token_ids` from block index `start` on, chained from `parent` (the hash of block
    `start - 1`; the root when `start` is 0). A trailing partial block has no hash."""
    end = len(token_ids) // block_size
    if end <= start:
        return []
    data = np.asarray(token_ids[start * block_size : end * block_size], dtype=np.int64).tobytes()  # once, not per block
    step = block_size * 8
    hashes = []
    parent = root if parent is None else parent
    for offset in range(0, len(data), step):
        parent = hashlib.blake2b(parent + data[offset : offset + step], digest_size=16).digest()
        hashes.append(parent)
    return hashes
