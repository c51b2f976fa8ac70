"""`tiered-kv-cache simulate`: replay a request trace through the block manager and count what each tier did.

The replay drives the engine's own `KVCacheManager` (its placement, policies, promotions and demotions), with no
pool: blocks are only counted. Semantics, so that counts are exact and comparable: only full blocks are cached (a
trailing partial block counts as missed tokens); a block's key chains its parent's key and its token ids; blocks of a
request are processed in order; a block found in any tier is a hit of that tier and moves to hbm (leaving its old
tier first); a block found nowhere is a miss and is inserted in hbm; a tier that needs room moves its victim (chosen
by the policy within that tier) one tier down, and a victim of disk is dropped; a block arriving in a tier counts as
just used there. A hardware profile turns the bytes moved into transfer time; `prefill_tokens_per_s` turns missed
tokens into prefill time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import yaml
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from mimo_core.contract import Contract, ContractError
from mimo_core.profiles import HardwareProfile, load_profile, shipped_profiles
from tiered_kv_cache.blocks import block_hashes
from tiered_kv_cache.manager import KVCacheManager
from tiered_kv_cache.eviction import EVICTION_POLICIES
from tiered_kv_cache.tiers import DEMOTIONS, LINKS, PROMOTIONS, TIERS, TierConfig

FINGERPRINT = "simulate"  # every trace's blocks chain from the same root: one model


class TraceError(ValueError):
    """A trace line that is not a request; the message is `line N: reason`."""


@dataclass
class ModelShape(Contract):
    """The KV layout of a model, for capacities and bytes moved in bytes: layers, kv heads, head size, bytes per
    value."""

    n_layer: int
    n_kv_head: int
    head_dim: int
    dtype_bytes: int = 2

    def block_bytes(self, block_size: int) -> int:
        """Bytes of one block's keys and values across all layers."""
        return 2 * self.n_layer * self.n_kv_head * block_size * self.head_dim * self.dtype_bytes


@dataclass
class SimulateConfig(Contract):
    """The simulated cache: block size, capacities (blocks, or bytes with a model shape), policy, hardware profile,
    and the prefill speed that turns missed tokens into time."""

    block_size: int = 16
    capacity_blocks: dict[str, int] | None = None
    capacity_bytes: dict[str, float] | None = None
    model: ModelShape | None = None
    policy: str = "lru"
    profile: str | None = None
    prefill_tokens_per_s: float | None = None

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError("block_size must be at least 1")
        if (self.capacity_blocks is None) == (self.capacity_bytes is None):
            raise ValueError("give exactly one of capacity_blocks and capacity_bytes")
        given = self.capacity_blocks if self.capacity_blocks is not None else self.capacity_bytes
        unknown = set(given) - set(TIERS)  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"unknown tiers {sorted(unknown)}; tiers: {', '.join(TIERS)}")
        if any(v < 0 for v in given.values()):  # type: ignore[union-attr]
            raise ValueError("capacities cannot be negative")
        if self.capacity_bytes is not None and self.model is None:
            raise ValueError("capacity_bytes needs the model shape (model: n_layer, n_kv_head, head_dim, dtype_bytes)")
        if self.policy not in EVICTION_POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; known: {', '.join(EVICTION_POLICIES)}")
        if self.profile is not None and self.profile not in shipped_profiles():
            raise ValueError(f"unknown hardware profile {self.profile!r}; known: {', '.join(shipped_profiles())}")
        if self.prefill_tokens_per_s is not None and self.prefill_tokens_per_s <= 0:
            raise ValueError("prefill_tokens_per_s must be positive")
        if self.capacities()["hbm"] < 1:
            raise ValueError("hbm must hold at least one block")

    @property
    def block_bytes(self) -> int:
        """Bytes of one block, or 0 without a model shape (then no bytes are counted)."""
        return self.model.block_bytes(self.block_size) if self.model else 0

    def capacities(self) -> dict[str, int]:
        """Blocks each tier may hold."""
        if self.capacity_blocks is not None:
            return {tier: int(self.capacity_blocks.get(tier, 0)) for tier in TIERS}
        return {tier: int((self.capacity_bytes or {}).get(tier, 0) // self.block_bytes) for tier in TIERS}

    @classmethod
    def from_yaml(cls, path: Path) -> SimulateConfig:
        """The config in a YAML file; ContractError (one line, naming the file) if it cannot be used."""
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ContractError(f"{path}: {str(exc).splitlines()[0]}") from None
        return cls.from_dict(data if data is not None else {}, str(path))


@dataclass
class Counts(Contract):
    """Blocks or tokens: in all, missed everywhere, and hit in each tier."""

    total: int = 0
    miss: int = 0
    hit: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIERS, 0))


@dataclass
class ModelledTime(Contract):
    """Seconds the traffic would take: moving blocks between tiers, and prefilling the missed tokens."""

    transfer: float = 0.0
    prefill: float = 0.0


@dataclass
class SimulationResult(Contract):
    """What a replay counted."""

    requests: int
    block_size: int
    policy: str
    blocks: Counts
    tokens: Counts
    demotions: dict[str, int]
    promotions: dict[str, int]
    drops: int
    bytes_moved: dict[str, int]
    modelled_time_s: ModelledTime


def transfer_seconds(bytes_moved: dict[str, int], profile: HardwareProfile) -> float:
    """Time to move the bytes over each link: hbm<->dram over the host link, dram<->disk at the disk's speed."""
    return bytes_moved["hbm<->dram"] / profile.host_link_bandwidth + bytes_moved["dram<->disk"] / profile.nvme_bandwidth


def simulate(requests: Iterable[Iterable[int]], config: SimulateConfig) -> SimulationResult:
    """Replay `requests` (token ids each) through a block manager with `config`'s tiers (see the module docstring)."""
    capacity = config.capacities()
    manager = KVCacheManager(capacity["hbm"], config.block_size, FINGERPRINT,
                             tiers=TierConfig(capacity["dram"], capacity["disk"], config.policy, None,
                                              config.block_bytes))
    count = total_tokens = 0
    for tokens in requests:
        count += 1
        total_tokens += len(tokens)  # type: ignore[arg-type]
        for block_hash in block_hashes(manager.root, tokens, config.block_size):  # type: ignore[arg-type]
            manager.reference(block_hash)
    return _result(manager, config, count, total_tokens)


def _result(manager: KVCacheManager, config: SimulateConfig, count: int, total_tokens: int) -> SimulationResult:
    stats = manager.stats
    hit_blocks = dict(stats.hit_blocks)
    hit_tokens = dict(stats.hit_tokens)
    missed_tokens = total_tokens - sum(hit_tokens.values())
    bytes_moved = {link: stats.bytes_moved[link] for link in LINKS}
    time = ModelledTime()
    if config.profile:
        time.transfer = round(transfer_seconds(bytes_moved, load_profile(config.profile)), 6)
    if config.prefill_tokens_per_s:
        time.prefill = round(missed_tokens / config.prefill_tokens_per_s, 6)
    return SimulationResult(
        requests=count,
        block_size=config.block_size,
        policy=config.policy,
        blocks=Counts(sum(hit_blocks.values()) + stats.miss_blocks["disk"], stats.miss_blocks["disk"], hit_blocks),
        tokens=Counts(total_tokens, missed_tokens, hit_tokens),
        demotions={link: stats.demotions[link] for link in DEMOTIONS},
        promotions={link: stats.promotions[link] for link in PROMOTIONS},
        drops=stats.drops,
        bytes_moved=bytes_moved,
        modelled_time_s=time,
    )


def read_trace(lines: Iterable[str]) -> Iterator[np.ndarray]:
    """The token ids of each request of a JSONL trace (`{"id": ..., "tokens": [...]}` a line; blank lines skipped);
    TraceError `line N: reason` at the first line that is not a request."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise TraceError(f"line {number}: not valid JSON") from None
        if not isinstance(request, dict) or not isinstance(request.get("tokens"), list):
            raise TraceError(f"line {number}: expected an object with a list of token ids in 'tokens'")
        try:
            tokens = np.asarray(request["tokens"])
        except (ValueError, OverflowError):
            raise TraceError(f"line {number}: 'tokens' must be a list of token ids") from None
        if tokens.size and (tokens.ndim != 1 or tokens.dtype.kind not in "iu" or tokens.min() < 0):
            raise TraceError(f"line {number}: 'tokens' must be a list of non-negative integers")
        yield tokens.astype(np.int64)


def simulate_trace(trace: IO[str], config: SimulateConfig) -> SimulationResult:
    """Replay a JSONL trace, with a requests-done counter on stderr."""
    console = Console(stderr=True)
    progress = Progress(SpinnerColumn(), TextColumn("simulate: {task.completed} requests"), TimeElapsedColumn(),
                        console=console, disable=not console.is_terminal, transient=True)

    def counted() -> Iterator[np.ndarray]:
        task = progress.add_task("simulate", total=None)
        for tokens in read_trace(trace):
            yield tokens
            progress.advance(task)

    with progress:
        return simulate(counted(), config)
