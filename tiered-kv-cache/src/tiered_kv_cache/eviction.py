"""Eviction policies: which block of a tier goes first when the tier needs room.

A policy orders the *evictable* blocks of one tier, by key. Blocks held by a running sequence are pinned: the
manager takes them out (`remove`) and puts them back when their last holder lets go (`insert`). `insert(key,
reused=True)` says the block was just used again (a cache hit), which is what the scan-resistant policies tell
apart from blocks used once: a long one-off prompt (a scan) fills their probation / small queue and leaves the
blocks that agents share alone. SLRU and S3-FIFO remember where a removed key lived (a bounded memory), so a block
that a sequence held for a while comes back to its own segment.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Protocol

Key = Hashable
MAX_FREQ = 3  # S3-FIFO's frequency counter saturates here (two bits)


class EvictionPolicy(Protocol):
    """The evictable keys of one tier, in the order the policy would evict them."""

    def insert(self, key: Key, reused: bool = False) -> None:
        """The block `key` is evictable here from now on: it arrived, or its last holder let go."""

    def remove(self, key: Key) -> None:
        """The block `key` is no longer evictable here: pinned by a sequence, promoted, or deleted."""

    def evict(self) -> Key:
        """Choose a victim, forget it, and return it (the policy is not empty)."""

    def __len__(self) -> int: ...

    def __contains__(self, key: object) -> bool: ...

    def __iter__(self) -> Iterator[Key]: ...


class LRU:
    """Least recently used first."""

    def __init__(self, capacity: int) -> None:
        self._order: OrderedDict[Key, None] = OrderedDict()  # first = least recently used

    def insert(self, key: Key, reused: bool = False) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def remove(self, key: Key) -> None:
        self._order.pop(key, None)

    def evict(self) -> Key:
        return self._order.popitem(last=False)[0]

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, key: object) -> bool:
        return key in self._order

    def __iter__(self) -> Iterator[Key]:
        return iter(list(self._order))


class _Memory:
    """A bounded map from keys that left a policy to what it knew of them, forgetting the oldest first."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._items: OrderedDict[Key, object] = OrderedDict()

    def put(self, key: Key, value: object) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def pop(self, key: Key, default: object = None) -> object:
        return self._items.pop(key, default)


class SLRU:
    """Segmented LRU: blocks used once wait in a probation segment; a block used again moves to the protected
    segment (80% of the tier), whose overflow falls back to probation. Victims come from probation first."""

    PROTECTED_FRACTION = 0.8

    def __init__(self, capacity: int) -> None:
        self._protected_max = max(1, int(capacity * self.PROTECTED_FRACTION))
        self._probation: OrderedDict[Key, None] = OrderedDict()  # first = least recently used
        self._protected: OrderedDict[Key, None] = OrderedDict()
        self._away = _Memory(capacity)  # removed keys -> whether they were protected

    def insert(self, key: Key, reused: bool = False) -> None:
        was_protected = self._away.pop(key, False)
        if reused or was_protected:
            self._probation.pop(key, None)
            self._protected[key] = None
            self._protected.move_to_end(key)
            if len(self._protected) > self._protected_max:
                self._probation[self._protected.popitem(last=False)[0]] = None
        elif key not in self._protected:
            self._probation[key] = None
            self._probation.move_to_end(key)

    def remove(self, key: Key) -> None:
        if key in self._protected:
            del self._protected[key]
            self._away.put(key, True)
        elif key in self._probation:
            del self._probation[key]
            self._away.put(key, False)

    def evict(self) -> Key:
        return (self._probation or self._protected).popitem(last=False)[0]

    def __len__(self) -> int:
        return len(self._probation) + len(self._protected)

    def __contains__(self, key: object) -> bool:
        return key in self._probation or key in self._protected

    def __iter__(self) -> Iterator[Key]:
        return iter([*self._probation, *self._protected])


class S3FIFO:
    """S3-FIFO (Yang et al., SOSP 2023): new blocks enter a small FIFO (10% of the tier); a block used again before
    it reaches the small queue's head moves on to the main FIFO, others are evicted and remembered (ghost), and a
    remembered block that comes back goes straight to main. In main, a block used since it last reached the head
    goes round once more (its use count, at most 3, drops by one)."""

    SMALL_FRACTION = 0.1

    def __init__(self, capacity: int) -> None:
        self._small_max = max(1, int(capacity * self.SMALL_FRACTION))
        self._small: OrderedDict[Key, None] = OrderedDict()  # first = oldest
        self._main: OrderedDict[Key, None] = OrderedDict()
        self._freq: dict[Key, int] = {}  # uses since arrival (small) or since the last round (main)
        self._ghost = _Memory(capacity)  # keys evicted from small
        self._away = _Memory(capacity)  # removed keys -> (was in main, freq)

    def insert(self, key: Key, reused: bool = False) -> None:
        if key in self._freq:  # still queued: a use
            self._freq[key] = min(MAX_FREQ, self._freq[key] + reused)
            return
        known = self._away.pop(key)
        in_main, freq = known if known is not None else (self._ghost.pop(key) is not None, 0)  # type: ignore[misc]
        self._freq[key] = min(MAX_FREQ, freq + reused)
        (self._main if in_main else self._small)[key] = None

    def remove(self, key: Key) -> None:
        if key in self._freq:
            in_main = key in self._main
            del (self._main if in_main else self._small)[key]
            self._away.put(key, (in_main, self._freq.pop(key)))

    def evict(self) -> Key:
        while True:
            if self._small and (len(self._small) >= self._small_max or not self._main):
                key = self._small.popitem(last=False)[0]
                if self._freq[key]:  # used again while in small: it earned a place in main
                    self._freq[key] = 0
                    self._main[key] = None
                    continue
                del self._freq[key]
                self._ghost.put(key, True)
                return key
            key = self._main.popitem(last=False)[0]
            if self._freq[key]:
                self._freq[key] -= 1
                self._main[key] = None
                continue
            del self._freq[key]
            return key

    def __len__(self) -> int:
        return len(self._freq)

    def __contains__(self, key: object) -> bool:
        return key in self._freq

    def __iter__(self) -> Iterator[Key]:
        return iter([*self._small, *self._main])


EVICTION_POLICIES: dict[str, type] = {"lru": LRU, "slru": SLRU, "s3fifo": S3FIFO}


def make_policy(name: str, capacity: int) -> EvictionPolicy:
    """The policy called `name` for a tier of `capacity` blocks; ValueError naming the known ones."""
    if name not in EVICTION_POLICIES:
        raise ValueError(f"unknown eviction policy {name!r}; known: {', '.join(EVICTION_POLICIES)}")
    return EVICTION_POLICIES[name](capacity)
