"""The in-memory KV cache: layer-by-layer appends, reads, rollback, forks and amortised growth."""

import numpy as np
import pytest

from mimo_engine.kv import InMemoryKVCache

N_LAYER, N_KV, HD = 3, 2, 4


def _kv(start: int, count: int) -> np.ndarray:
    """Keys whose every entry is its position, so that a read shows which positions it holds."""
    return np.broadcast_to(np.arange(start, start + count, dtype=np.float32)[:, None, None], (count, N_KV, HD)).copy()


def _forward(cache: InMemoryKVCache, count: int) -> None:
    """What one forward pass does: append `count` new positions to every layer in turn."""
    start = cache.num_tokens
    for layer in range(N_LAYER):
        cache.append(layer, _kv(start, count), -_kv(start, count))


def _positions(cache: InMemoryKVCache, layer: int = 0) -> list[float]:
    return cache.read(layer)[0][:, 0, 0].tolist()


def test_num_tokens_advances_when_every_layer_has_appended():
    cache = InMemoryKVCache(N_LAYER, N_KV, HD)
    cache.append(0, _kv(0, 5), _kv(0, 5))
    assert cache.num_tokens == 0  # layer 0 holds them, the others not yet
    assert cache.read(0)[0].shape == (5, N_KV, HD)
    for layer in (1, 2):
        cache.append(layer, _kv(0, 5), _kv(0, 5))
    assert cache.num_tokens == 5


def test_read_returns_every_position_in_order():
    cache = InMemoryKVCache(N_LAYER, N_KV, HD)
    _forward(cache, 7)
    _forward(cache, 1)
    k, v = cache.read(2)
    assert _positions(cache, 2) == list(range(8))
    np.testing.assert_array_equal(v, -k)


def test_read_heads_is_read_head_major():
    cache = InMemoryKVCache(N_LAYER, N_KV, HD)
    _forward(cache, 5)
    for token_major, head_major in zip(cache.read(1), cache.read_heads(1)):
        assert head_major.shape == (N_KV, 5, HD)
        np.testing.assert_array_equal(head_major, token_major.transpose(1, 0, 2))


def test_growth_is_amortised_and_keeps_contents():
    cache = InMemoryKVCache(N_LAYER, N_KV, HD, block_size=16)
    capacities = set()
    for _ in range(1000):
        _forward(cache, 1)
        capacities.add(cache.num_blocks)
    assert len(capacities) <= 8  # doubling: a handful of reallocations for 1000 appends, not one per token
    assert cache.num_blocks * cache.block_size < 2 * 1000 + cache.block_size
    assert _positions(cache, 1) == list(range(1000))


def test_truncate_rolls_back_and_new_positions_overwrite():
    cache = InMemoryKVCache(N_LAYER, N_KV, HD)
    _forward(cache, 10)
    cache.truncate(6)
    assert cache.num_tokens == 6 and _positions(cache) == list(range(6))
    cache.append(0, _kv(100, 2), _kv(100, 2))
    assert _positions(cache) == [0, 1, 2, 3, 4, 5, 100, 101]
    with pytest.raises(ValueError):
        cache.truncate(20)


def test_fork_is_independent():
    cache = InMemoryKVCache(N_LAYER, N_KV, HD)
    _forward(cache, 4)
    twin = cache.fork()
    _forward(twin, 3)
    cache.truncate(2)
    assert twin.num_tokens == 7 and _positions(twin) == list(range(7))
    assert cache.num_tokens == 2 and _positions(cache) == [0, 1]
