"""The tiers below the engine's pool (dram, a host pool, and disk, durable files) and the figures of block traffic.

Three exclusive tiers: a block lives in exactly one. `hbm` is the pool the engine computes in (the manager's own);
`LowerTier` is dram or disk: a capacity in blocks, an eviction policy, and a store for the blocks' keys and values
(none when a simulation only counts). Every figure of the traffic between tiers is declared once in `CacheStats`,
with its help text and the label its values are split by, so that `/metrics` and the simulator derive from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tiered_kv_cache.blocks import BlockHash
from tiered_kv_cache.eviction import EvictionPolicy, make_policy

TIERS = ("hbm", "dram", "disk")
DRAM_BYTES = 2 << 30  # a server's default host tier, per model (held only as blocks are demoted into it)
DISK_BYTES = 8 << 30  # a server's default disk tier, per model
DEMOTIONS = ("hbm->dram", "dram->disk")
PROMOTIONS = ("dram->hbm", "disk->hbm")
LINKS = ("hbm<->dram", "dram<->disk")


def figure(help: str, label: str | None = None, keys: tuple[str, ...] = ()) -> Any:
    """A field of `CacheStats`: a count, or counts by tier or link (`label`, one of `keys` each)."""
    default: dict[str, Any] = {"default_factory": (lambda: dict.fromkeys(keys, 0))} if label else {"default": 0}
    return field(metadata={"help": help, "label": label}, **default)


@dataclass
class CacheStats:
    """Prefix reuse and block traffic since the manager was made. A block missed in a tier was not found there nor
    in any tier above it: misses of `disk` are blocks found nowhere."""

    lookups: int = figure("Prompts looked up for cached prefix blocks.")
    lookup_tokens: int = figure("Prompt tokens looked up.")
    hit_blocks: dict[str, int] = figure("Blocks found in a tier.", "tier", TIERS)
    hit_tokens: dict[str, int] = figure("Prompt tokens served from blocks found in a tier.", "tier", TIERS)
    miss_blocks: dict[str, int] = figure("Blocks not found in a tier nor above it.", "tier", TIERS)
    miss_tokens: dict[str, int] = figure("Prompt tokens not served from a tier nor from above it.", "tier", TIERS)
    promotions: dict[str, int] = figure("Blocks moved up to hbm on a hit.", "link", PROMOTIONS)
    demotions: dict[str, int] = figure("Blocks moved one tier down to make room.", "link", DEMOTIONS)
    drops: int = figure("Blocks dropped off the disk tier to make room (or because a write failed).")
    bytes_moved: dict[str, int] = figure("Bytes of keys and values copied over a link between tiers.", "link", LINKS)
    corrupt: int = figure("Disk blocks that failed their check: deleted, never served.")
    copies: int = figure("Copy-on-write block copies.")

    @property
    def total_hit_tokens(self) -> int:
        """Prompt tokens served from any tier."""
        return sum(self.hit_tokens.values())


class Store(Protocol):
    """Where a lower tier keeps its blocks' keys and values."""

    def put(self, key: BlockHash, data: Any) -> None: ...

    def take(self, key: BlockHash) -> Any: ...

    def drop(self, key: BlockHash) -> None: ...


class HostStore:
    """The dram tier's memory: blocks' keys and values copied out of the pool, by hash."""

    def __init__(self) -> None:
        self._data: dict[BlockHash, Any] = {}

    def put(self, key: BlockHash, data: Any) -> None:
        self._data[key] = data

    def take(self, key: BlockHash) -> Any:
        return self._data.pop(key, None)

    def drop(self, key: BlockHash) -> None:
        self._data.pop(key, None)


@dataclass
class LowerTier:
    """dram or disk: which blocks it holds (its policy's keys), how many it may hold, and their data (`store`)."""

    name: str
    capacity: int
    policy: EvictionPolicy
    store: Store | None = None

    def __contains__(self, key: object) -> bool:
        return key in self.policy

    def __len__(self) -> int:
        return len(self.policy)


@dataclass(frozen=True)
class TierConfig:
    """The tiers below hbm: capacities in blocks, the eviction policy of every tier, and the disk tier's folder
    (None: no data is kept, blocks are only counted, as in a simulation). `block_bytes` counts bytes moved where
    there is no pool to ask."""

    dram_blocks: int = 0
    disk_blocks: int = 0
    policy: str = "lru"
    disk_root: Path | None = None
    block_bytes: int = 0

    def __post_init__(self) -> None:
        if self.dram_blocks < 0 or self.disk_blocks < 0:
            raise ValueError("tier capacities cannot be negative")
        make_policy(self.policy, 1)  # an unknown name fails here, with the known ones


@dataclass(frozen=True)
class TierSizes:
    """A server's lower tiers in bytes (the pool is sized apart), the eviction policy, and the disk tier's folder
    (None: no disk tier); each model's manager gets them in its own blocks."""

    dram_bytes: int = DRAM_BYTES
    disk_bytes: int = DISK_BYTES
    policy: str = "lru"
    disk_root: Path | None = None

    def in_blocks(self, block_bytes: int) -> TierConfig:
        """The tiers for a model whose blocks take `block_bytes`."""
        disk_blocks = self.disk_bytes // block_bytes if self.disk_root is not None else 0
        return TierConfig(self.dram_bytes // block_bytes, disk_blocks, self.policy, self.disk_root, block_bytes)
