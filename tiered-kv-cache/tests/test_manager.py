"""The block manager's verbs, and a random workload checked against what each sequence should read."""

import random

import numpy as np
import pytest

from tiered_kv_cache import TIERS, KVCacheManager, KVPool, NoFreeBlocks, TierConfig

BS = 4


class CopyRecorder:
    """A pool that only records copy-on-write copies."""

    block_nbytes = 0
    block_shape = ()

    def __init__(self, copies):
        self.copy_block = lambda src, dst: copies.append((src, dst))


def manager(num_blocks=16, **kwargs):
    return KVCacheManager(num_blocks, BS, fingerprint="test-model", **kwargs)


def test_lookup_finds_committed_prefix_blocks_and_stops_one_token_short():
    m = manager()
    prompt = list(range(12))
    m.allocate("a", len(prompt))
    m.commit("a", prompt)
    assert m.lookup(prompt).blocks == m.block_table("a")[:2]  # 12 tokens: block 3 would leave no token to compute
    assert m.lookup(prompt + [99]).blocks == m.block_table("a")  # one more token: all three blocks reusable
    assert m.lookup([0, 1, 2, 7, 4, 5, 6, 7, 8]).blocks == m.block_table("a")[:0]  # differs in block 0: nothing
    other = KVCacheManager(16, BS, fingerprint="another-model")
    other.allocate("a", 12)
    other.commit("a", prompt)
    assert other.lookup(prompt + [99]).blocks and not set(m._cached) & set(other._cached)  # fingerprints separate chains


def test_shared_blocks_are_freed_only_when_the_last_holder_frees_them():
    m = manager()
    prompt = list(range(9))
    m.allocate("a", 9)
    m.commit("a", prompt)
    prefix = m.lookup(prompt).blocks
    m.allocate("b", 9, prefix=prefix)
    assert all(m.ref_count(b) == 2 for b in prefix)
    used = m.num_used_blocks
    m.free("a")
    assert all(m.ref_count(b) == 1 for b in prefix) and m.num_used_blocks == used - 1  # only a's own tail block
    m.free("b")
    m.free("b")  # twice is harmless
    assert m.num_free_blocks == 16 and m.num_cached_blocks == 2  # freed, still findable


def test_fork_is_copy_on_write():
    copies = []
    m = manager(pool=CopyRecorder(copies))
    m.allocate("p", 6)  # one full block and a partial one
    m.fork("p", "c")
    assert m.block_table("c") == m.block_table("p") and copies == []
    m.allocate("c", 7)  # the child writes into the shared partial block: it gets its own copy
    assert copies == [(m.block_table("p")[1], m.block_table("c")[1])]
    assert m.block_table("c")[0] == m.block_table("p")[0]  # the full block stays shared
    m.allocate("p", 7)  # the parent now holds its partial block alone: no copy
    assert len(copies) == 1 and m.stats.copies == 1


def test_truncate_releases_trailing_blocks_and_a_committed_block_is_not_written_in_place():
    m = manager()
    tokens = list(range(12))
    m.allocate("s", 12)
    m.commit("s", tokens)
    m.allocate("t", 12, prefix=m.lookup(tokens + [0]).blocks)
    free = m.num_free_blocks
    m.truncate("s", 5)  # rollback: block 2 released by s, block 1 now partial
    assert m.num_tokens("s") == 5 and len(m.block_table("s")) == 2 and m.num_free_blocks == free
    shared = m.block_table("s")[1]
    m.allocate("s", 6)  # writing into the block t still reads: s gets a copy
    assert m.block_table("s")[1] != shared and m.block_table("t")[1] == shared
    assert m.lookup(tokens + [0]).blocks == m.block_table("t")  # t's committed blocks are intact
    with pytest.raises(ValueError):
        m.truncate("s", 7)


def test_allocation_failure_changes_nothing_and_eviction_takes_the_least_recently_freed():
    m = manager(num_blocks=4)
    m.allocate("a", 8)
    m.commit("a", list(range(8)))
    m.free("a")  # two committed blocks, free but findable
    m.allocate("b", 8)  # takes the two never-used blocks first
    assert m.num_cached_blocks == 2
    with pytest.raises(NoFreeBlocks):
        m.allocate("c", 12)
    assert "c" not in m and m.num_free_blocks == 2
    m.allocate("c", 4)
    assert m.num_cached_blocks == 1 and m.stats.demotions["hbm->dram"] == 1
    # a's blocks were freed tail first, so its tail block was the least recently freed and went; its head remains
    assert m.lookup(list(range(8)) + [0]).blocks == [0]


@pytest.mark.parametrize("policy, dram, disk", [("lru", 0, 0), ("lru", 8, 16), ("slru", 8, 16), ("s3fifo", 8, 16)])
def test_a_thousand_random_requests_leak_nothing_and_every_sequence_reads_its_own_tokens(tmp_path, policy, dram, disk):
    # Each position's key is its token id: after any mix of prefix reuse (from any tier), forks, rollbacks and
    # frees, every live sequence must read back exactly its own tokens from the pool: blocks it holds were never
    # evicted, and blocks brought back from dram or disk hold what was computed. No tier ever holds more than it may.
    rng = random.Random(7)
    pool = KVPool(n_layer=1, n_kv_head=1, head_dim=1, num_blocks=32, block_size=BS)
    m = KVCacheManager(32, BS, fingerprint="f", pool=pool, tiers=TierConfig(dram, disk, policy, tmp_path))
    live: dict[int, list[int]] = {}
    vocabulary = [rng.sample(range(50), 6) for _ in range(12)]  # shared prompt heads, more than hbm keeps

    def write(seq, tokens, start):
        table = m.allocate(seq, len(tokens))
        slots = pool.slots(table, start, len(tokens))
        values = np.asarray(tokens[start:], dtype=np.float32).reshape(-1, 1, 1)
        pool.write(0, slots, values, values)
        m.commit(seq, tokens)

    for request in range(1000):
        op = rng.random()
        if op < 0.5 or not live:
            tokens = rng.choice(vocabulary) + [rng.randrange(50) for _ in range(rng.randrange(1, 12))]
            prefix = m.lookup(tokens).blocks
            try:
                m.allocate(request, len(prefix) * BS, prefix=prefix)
                write(request, tokens, len(prefix) * BS)
            except NoFreeBlocks:
                m.free(request)
                continue
            live[request] = tokens
        else:
            seq = rng.choice(list(live))
            try:
                if op < 0.65:
                    m.fork(seq, request)
                    live[request] = list(live[seq])
                elif op < 0.8:
                    keep = rng.randrange(len(live[seq]) + 1)
                    m.truncate(seq, keep)
                    live[seq] = live[seq][:keep]
                    grown = live[seq] + [rng.randrange(50) for _ in range(rng.randrange(1, 6))]
                    write(seq, grown, keep)
                    live[seq] = grown
                else:
                    m.free(seq)
                    del live[seq]
            except NoFreeBlocks:
                m.free(seq)
                live.pop(seq, None)
        for seq, tokens in live.items():
            k, _ = pool.read(0, m.block_table(seq), len(tokens))
            assert k.ravel().tolist() == tokens, f"sequence {seq} after request {request}"
        held, capacity = m.tier_blocks(), m.tier_capacity()
        assert all(held[tier] <= capacity[tier] for tier in TIERS), f"{held} after request {request}"
    for seq in list(live):
        m.free(seq)
    assert m.num_free_blocks == 32 and all(m.ref_count(b) == 0 for b in range(32))
    assert m.stats.hit_tokens["hbm"] > 0 and m.stats.copies > 0 and m.stats.demotions["hbm->dram"] > 0
    if dram:
        assert m.stats.hit_tokens["dram"] > 0 and m.stats.hit_tokens["disk"] > 0 and m.stats.drops > 0
    assert len(list(tmp_path.rglob("*.kvb"))) == m.tier_blocks()["disk"]  # the disk tier's files are its blocks


def test_a_namespace_keeps_blocks_apart_from_the_models_own():
    """Blocks computed under other weight formats are found only by prompts computed under the same formats."""
    manager = KVCacheManager(8, block_size=4, fingerprint="model")
    prompt = list(range(9))
    manager.allocate("a", 9, namespace="mxfp4")
    manager.commit("a", prompt)
    manager.free("a")
    assert manager.lookup(prompt).blocks == []  # the model's own namespace has none of them
    found = manager.lookup(prompt, "mxfp4")
    assert len(found.blocks) == 2
    manager.allocate("b", 13, prefix=found.blocks, namespace="mxfp4")
    manager.fork("b", "c")  # a fork commits in its parent's namespace
    manager.commit("c", [*prompt, 9, 10, 11, 12])
    manager.free("b")
    manager.free("c")
    assert len(manager.lookup([*prompt, 9, 10, 11, 12, 13], "mxfp4").blocks) == 3
    assert manager.lookup([*prompt, 9, 10, 11, 12, 13]).blocks == []
