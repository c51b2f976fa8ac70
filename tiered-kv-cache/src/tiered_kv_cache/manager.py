"""The KV cache manager: which blocks each sequence's keys and values live in, and which blocks can be reused.

vLLM's vocabulary, small: the pool has `num_blocks` blocks of `block_size` token slots. A sequence owns a block
table (its blocks, in order). A full block that has been computed is *committed*: registered under its chained hash,
so a later prompt with the same prefix finds it (`lookup`) and takes a reference to it instead of recomputing it.
Blocks are reference counted; a block nobody holds goes to the free queue, where a committed block stays findable
until it is the least recently freed one and a new allocation takes it (eviction). Blocks held by a sequence are
never evicted. Shared blocks are copied before they are written (copy-on-write), so `fork` costs no copy.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

from tiered_kv_cache.blocks import BlockHash, block_hashes, root_hash

SeqId = Hashable


class NoFreeBlocks(RuntimeError):
    """The pool has fewer free blocks than an allocation needs; nothing was changed."""


@dataclass
class Block:
    """One block of the pool: how many sequences hold it, and its hash once it is committed."""

    block_id: int
    ref_count: int = 0
    block_hash: BlockHash | None = None


@dataclass
class SequenceBlocks:
    """A sequence's block table, the token positions it covers, and the hashes of its committed full blocks."""

    table: list[int] = field(default_factory=list)
    num_tokens: int = 0
    hashes: list[BlockHash] = field(default_factory=list)


@dataclass
class CacheStats:
    """Prefix reuse and block traffic since the manager was made."""

    lookups: int = 0
    lookup_tokens: int = 0  # prompt tokens that were looked up
    hit_tokens: int = 0  # of those, tokens found in committed blocks
    evictions: int = 0  # committed blocks whose content was dropped to make room
    copies: int = 0  # copy-on-write block copies


class KVCacheManager:
    """Block tables, reference counts, prefix lookup and copy-on-write over a pool of `num_blocks` blocks."""

    def __init__(self, num_blocks: int, block_size: int = 16, fingerprint: str = "",
                 copy_block: Callable[[int, int], None] | None = None) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.root = root_hash(fingerprint)
        self.stats = CacheStats()
        self._copy_block = copy_block
        self._blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # first = evicted first
        self._cached: dict[BlockHash, int] = {}
        self._seqs: dict[SeqId, SequenceBlocks] = {}

    # ------------------------------------------------------------------ figures

    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence holds (committed ones among them stay findable until reused)."""
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        """Blocks held by at least one sequence."""
        return self.num_blocks - len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        """Committed blocks a lookup can find."""
        return len(self._cached)

    def block_table(self, seq_id: SeqId) -> list[int]:
        """The sequence's blocks, in order."""
        return self._seqs[seq_id].table

    def num_tokens(self, seq_id: SeqId) -> int:
        """Token positions the sequence's blocks cover."""
        return self._seqs[seq_id].num_tokens

    def ref_count(self, block_id: int) -> int:
        """How many sequences hold the block."""
        return self._blocks[block_id].ref_count

    def __contains__(self, seq_id: SeqId) -> bool:
        return seq_id in self._seqs

    # ------------------------------------------------------------------ verbs

    def lookup(self, token_ids: Sequence[int]) -> list[int]:
        """Committed blocks holding the longest cached prefix of `token_ids`, in order.

        It stops one token short of the prompt: the last prompt token is always computed, for its logits."""
        usable = (len(token_ids) - 1) // self.block_size
        found = []
        for block_hash in block_hashes(self.root, token_ids[: usable * self.block_size], self.block_size):
            block_id = self._cached.get(block_hash)
            if block_id is None:
                break
            found.append(block_id)
        self.stats.lookups += 1
        self.stats.lookup_tokens += len(token_ids)
        self.stats.hit_tokens += len(found) * self.block_size
        return found

    def allocate(self, seq_id: SeqId, num_tokens: int, prefix: Sequence[int] = ()) -> list[int]:
        """Make the sequence's blocks cover `num_tokens` positions and return its block table.

        A new sequence starts from `prefix` (blocks from `lookup`, whose references it takes). A shared or committed
        block about to be written is copied first. NoFreeBlocks, with nothing changed, if the pool is short."""
        seq = self._seqs.get(seq_id)
        if seq is None:
            if num_tokens < len(prefix) * self.block_size:
                raise ValueError(f"{num_tokens} tokens cannot start from a prefix of {len(prefix)} blocks")
            needed = math.ceil(num_tokens / self.block_size) - len(prefix)
            self._ensure_free(needed + sum(self._blocks[b].ref_count == 0 for b in prefix))
            for block_id in prefix:
                self._take(block_id)
            seq = SequenceBlocks(list(prefix), len(prefix) * self.block_size,
                                 [self._blocks[b].block_hash for b in prefix])  # type: ignore[misc]
            self._seqs[seq_id] = seq
        elif prefix:
            raise ValueError(f"sequence {seq_id!r} already has blocks; a prefix is only for a new sequence")
        if num_tokens < seq.num_tokens:
            raise ValueError(f"sequence {seq_id!r} covers {seq.num_tokens} tokens already; use truncate to shrink it")
        partial = seq.num_tokens % self.block_size != 0 and num_tokens > seq.num_tokens
        copy = partial and self._needs_copy(seq.table[seq.num_tokens // self.block_size])
        self._ensure_free(math.ceil(num_tokens / self.block_size) - len(seq.table) + copy)
        if partial:
            self._make_writable(seq, seq.num_tokens // self.block_size)
        while len(seq.table) * self.block_size < num_tokens:
            seq.table.append(self._new_block())
        seq.num_tokens = num_tokens
        return seq.table

    def commit(self, seq_id: SeqId, token_ids: Sequence[int]) -> None:
        """Register the sequence's full blocks among its first len(token_ids) positions, now computed, for reuse."""
        seq = self._seqs[seq_id]
        if len(token_ids) > seq.num_tokens:
            raise ValueError(f"{len(token_ids)} tokens committed, but sequence {seq_id!r} covers {seq.num_tokens}")
        start = len(seq.hashes)
        parent = seq.hashes[-1] if seq.hashes else None
        for index, block_hash in enumerate(block_hashes(self.root, token_ids, self.block_size, start, parent), start):
            block = self._blocks[seq.table[index]]
            if block.block_hash is None and block_hash not in self._cached:  # an equal block computed twice: keep one
                block.block_hash = block_hash
                self._cached[block_hash] = block.block_id
            seq.hashes.append(block_hash)

    def free(self, seq_id: SeqId) -> None:
        """Release the sequence's blocks (on finish, cancel and failure alike); freeing twice is harmless."""
        seq = self._seqs.pop(seq_id, None)
        if seq is not None:
            for block_id in reversed(seq.table):  # a prompt's tail blocks are evicted before its head blocks
                self._release(block_id)

    def fork(self, seq_id: SeqId, child_id: SeqId) -> list[int]:
        """A new sequence sharing every block of `seq_id` (copy-on-write); returns the child's block table."""
        if child_id in self._seqs:
            raise ValueError(f"sequence {child_id!r} exists already")
        seq = self._seqs[seq_id]
        for block_id in seq.table:
            self._blocks[block_id].ref_count += 1
        self._seqs[child_id] = SequenceBlocks(list(seq.table), seq.num_tokens, list(seq.hashes))
        return self._seqs[child_id].table

    def truncate(self, seq_id: SeqId, num_tokens: int) -> None:
        """Keep only the first `num_tokens` positions (speculation rollback); trailing blocks are released."""
        seq = self._seqs[seq_id]
        if not 0 <= num_tokens <= seq.num_tokens:
            raise ValueError(f"cannot truncate sequence {seq_id!r} of {seq.num_tokens} tokens to {num_tokens}")
        keep = math.ceil(num_tokens / self.block_size)
        for block_id in reversed(seq.table[keep:]):
            self._release(block_id)
        del seq.table[keep:]
        del seq.hashes[num_tokens // self.block_size :]
        seq.num_tokens = num_tokens

    # ------------------------------------------------------------------ blocks

    def _ensure_free(self, needed: int) -> None:
        if needed > len(self._free):
            raise NoFreeBlocks(f"{needed} blocks needed, {len(self._free)} free of {self.num_blocks}")

    def _new_block(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        block = self._blocks[block_id]
        if block.block_hash is not None:  # the least recently freed committed block: its content goes
            del self._cached[block.block_hash]
            block.block_hash = None
            self.stats.evictions += 1
        block.ref_count = 1
        return block_id

    def _take(self, block_id: int) -> None:
        block = self._blocks[block_id]
        if block.ref_count == 0:
            del self._free[block_id]
        block.ref_count += 1

    def _release(self, block_id: int) -> None:
        block = self._blocks[block_id]
        block.ref_count -= 1
        if block.ref_count == 0:
            self._free[block_id] = None
            if block.block_hash is None:  # nothing to reuse in it: hand it out first
                self._free.move_to_end(block_id, last=False)

    def _needs_copy(self, block_id: int) -> bool:
        return self._blocks[block_id].ref_count > 1

    def _make_writable(self, seq: SequenceBlocks, index: int) -> None:
        """Block `index` of `seq` is about to be written: copy it if shared, forget its hash if committed."""
        block = self._blocks[seq.table[index]]
        if block.ref_count > 1:
            new = self._new_block()
            if self._copy_block is not None:
                self._copy_block(block.block_id, new)
            block.ref_count -= 1
            seq.table[index] = new
            self.stats.copies += 1
        elif block.block_hash is not None:
            del self._cached[block.block_hash]
            block.block_hash = None
        del seq.hashes[index:]
