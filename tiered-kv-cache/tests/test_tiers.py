"""The manager's tiers with real data: blocks go down and come back intact, held blocks stay put, the disk tier
outlives its process and never serves another model's blocks."""

import errno

import numpy as np
import pytest

from tiered_kv_cache import KVCacheManager, KVPool, NoFreeBlocks, TierConfig, block_hashes, root_hash
from tiered_kv_cache.disk import DiskStore

BS = 4


def engine(tmp_path, num_blocks=4, dram=0, disk=8, fingerprint="model-a", policy="lru"):
    """A manager over a pool whose every value is what the test wrote, with the disk tier under tmp_path."""
    pool = KVPool(n_layer=2, n_kv_head=1, head_dim=3, num_blocks=num_blocks, block_size=BS)
    return KVCacheManager(num_blocks, BS, fingerprint, pool, TierConfig(dram, disk, policy, tmp_path)), pool


def compute(m, pool, seq, tokens):
    """Start `seq` from its cached prefix, 'compute' the rest (each position's keys: its token id, in every layer
    and head dimension; values: minus that), and return how many tokens came from the cache."""
    prefix = m.lookup(tokens)
    table = m.allocate(seq, len(tokens), prefix=prefix.blocks)
    start = len(prefix.blocks) * BS
    values = np.repeat(np.asarray(tokens[start:], dtype=np.float32)[:, None, None], 3, axis=2)  # [T, Hkv, hd]
    for layer in range(2):
        pool.write(layer, pool.slots(table, start, len(tokens)), values, -values)
    m.commit(seq, tokens)
    return prefix


def read(m, pool, seq, n):
    k, v = pool.read(1, m.block_table(seq), n)
    assert (k == -v).all()
    return k[0, :, 0].tolist()


PROMPT = list(range(100, 113))  # 3 full blocks and one token


def test_blocks_evicted_to_dram_come_back_intact(tmp_path):
    m, pool = engine(tmp_path, dram=8, disk=0)
    compute(m, pool, "a", PROMPT)
    m.free("a")
    compute(m, pool, "filler", list(range(16)))  # takes every block: the prompt's three go down to dram
    m.free("filler")
    assert m.tier_blocks() == {"hbm": 4, "dram": 3, "disk": 0}
    prefix = compute(m, pool, "b", PROMPT)
    assert prefix.tiers == ["dram"] * 3 and read(m, pool, "b", 13) == PROMPT
    assert m.stats.promotions == {"dram->hbm": 3, "disk->hbm": 0} and m.stats.bytes_moved["hbm<->dram"] > 0


def test_a_held_block_is_never_evicted_and_a_full_pool_refuses_rather_than_evicts(tmp_path):
    m, pool = engine(tmp_path, dram=8, disk=0)
    compute(m, pool, "a", PROMPT)  # holds all four blocks
    with pytest.raises(NoFreeBlocks):
        m.allocate("b", 4)
    assert m.stats.demotions["hbm->dram"] == 0 and read(m, pool, "a", 13) == PROMPT
    m.free("a")
    compute(m, pool, "c", PROMPT[:5])  # holds the prompt's first block and a new one
    compute(m, pool, "d", list(range(8)))  # room made by evicting the two blocks nobody holds
    assert m.stats.demotions["hbm->dram"] == 2 and read(m, pool, "c", 5) == PROMPT[:5]


def test_a_block_found_below_with_no_room_in_the_pool_stays_where_it_is(tmp_path):
    m, pool = engine(tmp_path, dram=8, disk=0)
    compute(m, pool, "a", PROMPT)
    m.free("a")
    compute(m, pool, "filler", list(range(16)))  # holds the whole pool; the prompt's blocks are in dram
    assert m.lookup(PROMPT).blocks == [] and m.tier_blocks()["dram"] == 3  # nothing to promote into


def test_the_disk_tier_outlives_its_process_and_serves_the_next(tmp_path):
    m, pool = engine(tmp_path)
    compute(m, pool, "a", PROMPT)
    m.free("a")
    m.spill()  # a clean stop: every cached block goes down to disk
    assert m.tier_blocks() == {"hbm": 0, "dram": 0, "disk": 3}
    again, pool2 = engine(tmp_path)  # a new process: an empty pool, the same folder
    prefix = compute(again, pool2, "b", PROMPT)
    assert prefix.tiers == ["disk"] * 3 and read(again, pool2, "b", 13) == PROMPT
    assert again.tier_blocks()["disk"] == 0  # a block lives in one tier: promoted, its file is gone


def test_a_block_of_another_model_fingerprint_is_never_served(tmp_path):
    m, pool = engine(tmp_path)
    compute(m, pool, "a", PROMPT)
    m.free("a")
    m.spill()
    other, pool2 = engine(tmp_path, fingerprint="model-b")  # other weights, KV dtype or block size
    assert other.tier_blocks()["disk"] == 0 and other.lookup(PROMPT).blocks == []
    compute(other, pool2, "b", PROMPT)
    other.free("b")
    other.spill()
    assert len(list(tmp_path.rglob("*.kvb"))) == 6  # each model's blocks in its own folder, none shared


def test_a_corrupt_disk_block_is_a_miss_and_the_prefix_is_recomputed_from_it(tmp_path):
    m, pool = engine(tmp_path)
    compute(m, pool, "a", PROMPT)
    m.free("a")
    m.spill()
    second = DiskStore(tmp_path, "model-a").path(block_hashes(root_hash("model-a"), PROMPT, BS)[1])
    data = bytearray(second.read_bytes())
    data[100] ^= 0xFF  # one bit of the second block's keys flips on disk
    second.write_bytes(bytes(data))
    again, pool2 = engine(tmp_path)
    prefix = compute(again, pool2, "b", PROMPT)
    assert prefix.tiers == ["disk"] and again.stats.corrupt == 1 and not second.exists()
    assert read(again, pool2, "b", 13) == PROMPT  # the first block served, the rest computed


def test_reopening_with_a_smaller_disk_tier_keeps_the_most_recent_blocks(tmp_path):
    m, pool = engine(tmp_path, num_blocks=8)
    compute(m, pool, "a", PROMPT)
    m.free("a")
    m.spill()
    small, _ = engine(tmp_path, disk=1)
    assert small.tier_blocks()["disk"] == 1 and len(list(tmp_path.rglob("*.kvb"))) == 1 and small.stats.drops == 2


def test_a_failing_disk_loses_the_block_not_the_engine(tmp_path, monkeypatch):
    m, pool = engine(tmp_path)

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(DiskStore, "put", full)
    compute(m, pool, "a", PROMPT)
    m.free("a")
    m.spill()
    assert m.tier_blocks() == {"hbm": 0, "dram": 0, "disk": 0} and m.stats.drops == 3
    compute(m, pool, "b", PROMPT)
    assert read(m, pool, "b", 13) == PROMPT
