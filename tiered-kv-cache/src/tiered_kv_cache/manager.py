"""The KV cache manager: which blocks each sequence's keys and values live in, and which blocks can be reused.

vLLM's vocabulary, small: the pool (tier `hbm`) has `num_blocks` blocks of `block_size` token slots. A sequence owns a
block table (its blocks, in order). A full block that has been computed is *committed*: registered under its chained
hash, so a later prompt with the same prefix finds it (`lookup`) and takes a reference to it instead of recomputing
it. Blocks are reference counted; a block a sequence holds is pinned, and never leaves hbm. A committed block nobody
holds stays findable; when a new block is needed and no empty one is left, hbm's eviction policy picks such a
block and it is *demoted*: its keys and values move to the dram tier, whose victim moves on to disk, whose victim is
dropped. A lookup that finds a block in dram or disk *promotes* it back into the pool. A block lives in exactly one
tier. Shared blocks are copied before they are written (copy-on-write), so `fork` costs no copy.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tiered_kv_cache.blocks import BlockHash, block_hashes, root_hash
from tiered_kv_cache.disk import DiskStore
from tiered_kv_cache.eviction import make_policy
from tiered_kv_cache.tiers import TIERS, CacheStats, HostStore, LowerTier, TierConfig

SeqId = Hashable
log = logging.getLogger(__name__)


class NoFreeBlocks(RuntimeError):
    """The pool has fewer free blocks than an allocation needs; nothing was changed."""


class BlockData(Protocol):
    """What the manager asks of the pool that holds the blocks' keys and values (`KVPool`)."""

    block_nbytes: int
    block_shape: tuple[int, ...]

    def copy_block(self, src: int, dst: int) -> None: ...

    def read_block(self, block_id: int) -> Any: ...

    def write_block(self, block_id: int, data: Any) -> None: ...


@dataclass
class Block:
    """One block of the pool: how many sequences hold it, its hash once committed, and whether it was a hit since
    it was last released (what a scan-resistant policy wants to know)."""

    block_id: int
    ref_count: int = 0
    block_hash: BlockHash | None = None
    hit: bool = False


@dataclass
class SequenceBlocks:
    """A sequence's block table, the token positions it covers, and the hashes of its committed full blocks."""

    table: list[int] = field(default_factory=list)
    num_tokens: int = 0
    hashes: list[BlockHash] = field(default_factory=list)
    root: BlockHash | None = None  # the chain's root: the manager's, or its namespace's (None: the manager's)


@dataclass(frozen=True)
class Prefix:
    """The cached blocks a prompt starts with, in order, and the tier each one was found in."""

    blocks: list[int]
    tiers: list[str]

    def tokens_by_tier(self, block_size: int) -> dict[str, int]:
        """Prompt tokens served from each tier."""
        return {tier: self.tiers.count(tier) * block_size for tier in TIERS}


class KVCacheManager:
    """Block tables, reference counts, prefix lookup and copy-on-write over a pool of `num_blocks` blocks, with the
    dram and disk tiers of `tiers` below it. Without a `pool` no data moves: blocks are only counted (a simulation)."""

    def __init__(self, num_blocks: int, block_size: int = 16, fingerprint: str = "", pool: BlockData | None = None,
                 tiers: TierConfig = TierConfig()) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.fingerprint = fingerprint
        self.root = root_hash(fingerprint)
        self.stats = CacheStats()
        self.policy = tiers.policy
        self.block_bytes = pool.block_nbytes if pool is not None else tiers.block_bytes
        self._pool = pool
        self._blocks = [Block(i) for i in range(num_blocks)]
        self._empty: deque[int] = deque(range(num_blocks))  # free blocks with nothing reusable: taken first
        self._hbm = make_policy(tiers.policy, num_blocks)  # committed blocks nobody holds, by hash
        self._cached: dict[BlockHash, int] = {}  # every committed block in the pool, held or not
        self._seqs: dict[SeqId, SequenceBlocks] = {}
        keep_data = pool is not None
        disk = None
        if keep_data and tiers.disk_root is not None and tiers.disk_blocks:
            disk = DiskStore(tiers.disk_root, fingerprint, pool.block_shape, "float32")  # type: ignore[union-attr]
        self._lower = [
            LowerTier("dram", tiers.dram_blocks, make_policy(tiers.policy, tiers.dram_blocks),
                      HostStore() if keep_data else None),
            LowerTier("disk", tiers.disk_blocks if disk or not keep_data else 0,
                      make_policy(tiers.policy, tiers.disk_blocks), disk),
        ]
        if disk is not None:
            self._reopen(disk)

    def _reopen(self, disk: DiskStore) -> None:
        """Serve the blocks an earlier process left on disk, least recently written evicted first."""
        tier = self._lower[-1]
        for key in disk.scan():
            tier.policy.insert(key)
        while len(tier) > tier.capacity:
            disk.drop(tier.policy.evict())
            self.stats.drops += 1

    # ------------------------------------------------------------------ figures

    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence holds (committed ones among them stay findable until evicted)."""
        return len(self._empty) + len(self._hbm)

    @property
    def num_used_blocks(self) -> int:
        """Blocks held by at least one sequence."""
        return self.num_blocks - self.num_free_blocks

    @property
    def num_cached_blocks(self) -> int:
        """Committed blocks in the pool a lookup can find."""
        return len(self._cached)

    def tier_blocks(self) -> dict[str, int]:
        """Blocks each tier holds now (hbm: committed blocks)."""
        return {"hbm": len(self._cached), **{t.name: len(t) for t in self._lower}}

    def tier_capacity(self) -> dict[str, int]:
        """Blocks each tier may hold."""
        return {"hbm": self.num_blocks, **{t.name: t.capacity for t in self._lower}}

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

    def namespace_root(self, namespace: str = "") -> BlockHash:
        """The root of the hash chains of a namespace: blocks whose contents depend on more than their tokens and the
        model (the weight formats they were computed with, say) live in one of their own ("": the model's)."""
        return self.root if not namespace else root_hash(f"{self.fingerprint}|{namespace}")

    def lookup(self, token_ids: Sequence[int], namespace: str = "") -> Prefix:
        """The longest cached prefix of `token_ids` in `namespace`: its blocks, in order, each brought into the pool
        from the tier it was found in.

        It stops one token short of the prompt: the last prompt token is always computed, for its logits."""
        usable = (len(token_ids) - 1) // self.block_size
        found: list[int] = []
        tiers: list[str] = []
        root = self.namespace_root(namespace)
        for block_hash in block_hashes(root, token_ids[: usable * self.block_size], self.block_size):
            tier = self._find(block_hash)  # on a hit the block is in the pool and held, so later promotions keep it
            if tier is None:
                break
            found.append(self._cached[block_hash])
            tiers.append(tier)
        for block_id in reversed(found):  # released head last: its blocks are the last of the prefix to be evicted
            self._release(block_id)
        self.stats.lookups += 1
        self.stats.lookup_tokens += len(token_ids)
        missed = len(token_ids) // self.block_size - len(found)
        self._count_miss(missed, len(token_ids) - len(found) * self.block_size)
        return Prefix(found, tiers)

    def reference(self, block_hash: BlockHash) -> str | None:
        """Use one block by its hash, as the simulator replays a trace: found in a tier, it is a hit there and ends
        up in hbm; found nowhere, it is a miss and a new hbm block is committed for it. Returns the tier it was found
        in, or None for a miss. NoFreeBlocks if every block of the pool is held."""
        tier = self._find(block_hash)
        if tier is None:
            self._ensure_free(1)
            block_id = self._new_block()
            self._register(self._blocks[block_id], block_hash)
            self._count_miss(1, self.block_size)
        self._release(self._cached[block_hash])
        return tier

    def allocate(self, seq_id: SeqId, num_tokens: int, prefix: Sequence[int] = (), namespace: str = "") -> list[int]:
        """Make the sequence's blocks cover `num_tokens` positions and return its block table.

        A new sequence starts from `prefix` (blocks from `lookup` in `namespace`, whose references it takes); its
        blocks are committed in that namespace. A shared or committed block about to be written is copied first.
        NoFreeBlocks, with nothing changed, if the pool is short."""
        seq = self._seqs.get(seq_id)
        if seq is None:
            if num_tokens < len(prefix) * self.block_size:
                raise ValueError(f"{num_tokens} tokens cannot start from a prefix of {len(prefix)} blocks")
            needed = math.ceil(num_tokens / self.block_size) - len(prefix)
            self._ensure_free(needed + sum(self._blocks[b].ref_count == 0 for b in prefix))
            for block_id in prefix:
                self._take(block_id)
            seq = SequenceBlocks(list(prefix), len(prefix) * self.block_size,
                                 [self._blocks[b].block_hash for b in prefix],  # type: ignore[misc]
                                 self.namespace_root(namespace))
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
        root = self.root if seq.root is None else seq.root
        for index, block_hash in enumerate(block_hashes(root, token_ids, self.block_size, start, parent), start):
            block = self._blocks[seq.table[index]]
            if block.block_hash is None and block_hash not in self._cached:  # an equal block computed twice: keep one
                self._register(block, block_hash)
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
        self._seqs[child_id] = SequenceBlocks(list(seq.table), seq.num_tokens, list(seq.hashes), seq.root)
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

    def spill(self) -> None:
        """Move every cached block no sequence holds down to disk, so that the next process finds it there (a clean
        stop). Least recently used go first, so a disk tier too small for all keeps the most recent."""
        if not self._lower[-1].capacity:
            return
        while len(self._hbm):
            self._empty.append(self._evict())
        for level, tier in enumerate(self._lower[:-1]):
            while len(tier):
                self._move_down(level, tier.policy.evict())

    # ------------------------------------------------------------------ tiers

    def _find(self, block_hash: BlockHash) -> str | None:
        """Where the block is: in the pool (then held, one more reference), or promoted into it from a lower tier
        (held too); None if it is nowhere, or could not be brought up (no room in the pool, a failed disk read)."""
        block_id = self._cached.get(block_hash)
        if block_id is not None:
            self._take(block_id)
            self._blocks[block_id].hit = True
            self._count_hit("hbm")
            return "hbm"
        for tier in self._lower:
            if block_hash in tier:
                if not self.num_free_blocks:
                    return None
                tier.policy.remove(block_hash)  # it leaves its tier first, making room there
                data = tier.store.take(block_hash) if tier.store is not None else None
                if isinstance(tier.store, DiskStore):
                    self.stats.corrupt = tier.store.corrupt
                if tier.store is not None and data is None:  # gone (gc), or failed its check: a miss
                    return None
                block = self._blocks[self._new_block()]
                if self._pool is not None:
                    self._pool.write_block(block.block_id, data)
                self._register(block, block_hash)
                block.hit = True
                self.stats.promotions[f"{tier.name}->hbm"] += 1
                self.stats.bytes_moved["hbm<->dram"] += self.block_bytes
                if tier.name == "disk":
                    self.stats.bytes_moved["dram<->disk"] += self.block_bytes
                self._count_hit(tier.name)
                return tier.name
        return None

    def _evict(self) -> int:
        """Demote hbm's victim to dram and return its now empty block."""
        block_hash = self._hbm.evict()
        block_id = self._cached.pop(block_hash)
        self._blocks[block_id].block_hash = None
        keeps_data = self._pool is not None and any(t.capacity for t in self._lower)
        data = self._pool.read_block(block_id) if keeps_data else None  # type: ignore[union-attr]
        self.stats.demotions["hbm->dram"] += 1
        self.stats.bytes_moved["hbm<->dram"] += self.block_bytes
        self._place(0, block_hash, data)
        return block_id

    def _place(self, level: int, block_hash: BlockHash, data: Any) -> None:
        """The block arrives in lower tier `level`, which first makes room by moving its victims down."""
        tier = self._lower[level]
        while len(tier) and len(tier) >= tier.capacity:
            self._move_down(level, tier.policy.evict())
        if not tier.capacity:  # a tier of no capacity passes its arrivals straight on
            self._move_down(level, block_hash, data, evicted=False)
            return
        tier.policy.insert(block_hash)
        if tier.store is not None:
            try:
                tier.store.put(block_hash, data)
            except OSError as exc:  # a full or failing disk loses the block, never the engine
                log.warning("could not write a KV block to the %s tier: %s", tier.name, exc)
                tier.policy.remove(block_hash)
                self.stats.drops += 1

    def _move_down(self, level: int, block_hash: BlockHash, data: Any = None, evicted: bool = True) -> None:
        """Move lower tier `level`'s block one tier down (`evicted`: it has left the tier's policy, its data is
        still in the tier's store); off the last tier it is dropped."""
        tier = self._lower[level]
        if level + 1 == len(self._lower):
            if evicted and tier.store is not None:
                tier.store.drop(block_hash)
            self.stats.drops += 1
            return
        if evicted and tier.store is not None:
            data = tier.store.take(block_hash)
        self.stats.demotions[f"{tier.name}->{self._lower[level + 1].name}"] += 1
        self.stats.bytes_moved["dram<->disk"] += self.block_bytes
        self._place(level + 1, block_hash, data)

    def _register(self, block: Block, block_hash: BlockHash) -> None:
        """Commit `block` under `block_hash`; a copy in a lower tier is superseded (a block lives in one tier)."""
        block.block_hash = block_hash
        self._cached[block_hash] = block.block_id
        for tier in self._lower:
            if block_hash in tier:
                tier.policy.remove(block_hash)
                if tier.store is not None:
                    tier.store.drop(block_hash)

    def _count_hit(self, tier: str) -> None:
        self.stats.hit_blocks[tier] += 1
        self.stats.hit_tokens[tier] += self.block_size
        for above in TIERS[: TIERS.index(tier)]:
            self.stats.miss_blocks[above] += 1
            self.stats.miss_tokens[above] += self.block_size

    def _count_miss(self, blocks: int, tokens: int) -> None:
        for tier in TIERS:
            self.stats.miss_blocks[tier] += blocks
            self.stats.miss_tokens[tier] += tokens

    # ------------------------------------------------------------------ blocks

    def _ensure_free(self, needed: int) -> None:
        if needed > self.num_free_blocks:
            raise NoFreeBlocks(f"{needed} blocks needed, {self.num_free_blocks} free of {self.num_blocks}")

    def _new_block(self) -> int:
        block_id = self._empty.popleft() if self._empty else self._evict()
        self._blocks[block_id].ref_count = 1
        self._blocks[block_id].hit = False
        return block_id

    def _take(self, block_id: int) -> None:
        block = self._blocks[block_id]
        if block.ref_count == 0:
            self._hbm.remove(block.block_hash)
        block.ref_count += 1

    def _release(self, block_id: int) -> None:
        block = self._blocks[block_id]
        block.ref_count -= 1
        if block.ref_count == 0:
            if block.block_hash is None:  # nothing to reuse in it: hand it out first
                self._empty.appendleft(block_id)
            else:
                self._hbm.insert(block.block_hash, reused=block.hit)
                block.hit = False

    def _needs_copy(self, block_id: int) -> bool:
        return self._blocks[block_id].ref_count > 1

    def _make_writable(self, seq: SequenceBlocks, index: int) -> None:
        """Block `index` of `seq` is about to be written: copy it if shared, forget its hash if committed."""
        block = self._blocks[seq.table[index]]
        if block.ref_count > 1:
            new = self._new_block()
            if self._pool is not None:
                self._pool.copy_block(block.block_id, new)
            block.ref_count -= 1
            seq.table[index] = new
            self.stats.copies += 1
        elif block.block_hash is not None:
            del self._cached[block.block_hash]
            block.block_hash = None
        del seq.hashes[index:]
