"""The simulator: exact per-tier counts on hand-traced reference strings, for each policy, and the command's I/O.

With block_size 1 a one-token request is one block keyed by its token, so a trace of one-token requests is a
classic reference string and every count below can be followed by hand (the comments do)."""

import json
import subprocess
import sys

import pytest

from mimo_core.profiles import load_profile
from tiered_kv_cache.eviction import EVICTION_POLICIES
from tiered_kv_cache.simulate import SimulateConfig, read_trace, simulate, TraceError

CLI = [sys.executable, "-c", "from tiered_kv_cache.cli import main; main()"]


def run(references, policy="lru", **capacity):
    config = SimulateConfig(block_size=1, capacity_blocks=capacity, policy=policy)
    return simulate([[r] for r in references], config).to_dict()


@pytest.mark.parametrize("policy", EVICTION_POLICIES)
def test_a_hit_in_any_tier_moves_the_block_to_hbm_and_victims_move_one_tier_down(policy):
    # hbm 2, dram 1, disk 1. References 1 2 3 1 4 1 2 (LRU's tiers after each step, hbm | dram | disk):
    # 1 2 miss [1 2 | - | -]; 3 miss, 1 down [2 3 | 1 | -]; 1 dram hit, 2 down [3 1 | 2 | -];
    # 4 miss, 3 down, 2 to disk [1 4 | 3 | 2]; 1 hbm hit; 2 disk hit, 4 down, 3 to disk [1 2 | 4 | 3].
    # The scan-resistant policies choose the same victims here: each tier's only candidates are the same blocks.
    out = run([1, 2, 3, 1, 4, 1, 2], policy, hbm=2, dram=1, disk=1)
    assert out["blocks"] == {"total": 7, "miss": 4, "hit": {"hbm": 1, "dram": 1, "disk": 1}}
    assert out["tokens"] == {"total": 7, "miss": 4, "hit": {"hbm": 1, "dram": 1, "disk": 1}}
    assert out["demotions"] == {"hbm->dram": 4, "dram->disk": 2}
    assert out["promotions"] == {"dram->hbm": 1, "disk->hbm": 1}
    assert out["drops"] == 0 and out["policy"] == policy and out["requests"] == 7


@pytest.mark.parametrize("policy, hits, drops", [("lru", 2, 4), ("slru", 4, 2), ("s3fifo", 4, 2)])
def test_a_scan_evicts_reused_blocks_under_lru_but_not_under_the_scan_resistant_policies(policy, hits, drops):
    # hbm 3, no lower tiers (a victim passes through dram and disk and is dropped). 1 and 2 are used twice, then
    # the scan 3 4 5 arrives. LRU keeps the last three blocks, so 1 and 2 are gone when they come back (hits: the
    # second 1 and 2 only; 4 evictions). SLRU holds 1 and 2 in its protected segment and S3-FIFO moves them to its
    # main queue, so the scan evicts only its own blocks (2 evictions) and 1 and 2 hit again.
    out = run([1, 1, 2, 2, 3, 4, 5, 1, 2], policy, hbm=3)
    assert out["blocks"]["hit"] == {"hbm": hits, "dram": 0, "disk": 0}
    assert out["blocks"]["miss"] == 9 - hits
    assert out["drops"] == drops == out["demotions"]["hbm->dram"] == out["demotions"]["dram->disk"]


def test_a_disk_victim_is_dropped():
    # hbm 1, dram 1, disk 1: 1 2 3 fill the three tiers, 4 pushes 1 off the disk; 1 is then a miss.
    out = run([1, 2, 3, 4, 1], hbm=1, dram=1, disk=1)
    assert out["drops"] == 2 and out["blocks"]["miss"] == 5 and out["demotions"] == {"hbm->dram": 4, "dram->disk": 3}


def test_only_full_blocks_are_cached_and_a_block_key_chains_its_prefix():
    config = SimulateConfig(block_size=4, capacity_blocks={"hbm": 8})
    out = simulate([list(range(10)), list(range(10)), [9, 9, 9, 9, *range(4, 8)]], config).to_dict()
    # 2 full blocks per 10-token request (2 tokens left over each); the third request's second block has the same
    # tokens as the first's but another parent: a miss.
    assert out["blocks"] == {"total": 6, "miss": 4, "hit": {"hbm": 2, "dram": 0, "disk": 0}}
    assert out["tokens"] == {"total": 28, "miss": 20, "hit": {"hbm": 8, "dram": 0, "disk": 0}}


def test_capacities_in_bytes_count_bytes_moved_and_the_profile_models_their_time():
    model = {"n_layer": 2, "n_kv_head": 1, "head_dim": 4, "dtype_bytes": 2}  # 2*2*1*1*4*2 = 32 bytes a block
    config = SimulateConfig.from_dict({"block_size": 1, "model": model, "profile": "h100-sxm",
                                       "capacity_bytes": {"hbm": 64, "dram": 32, "disk": 32},
                                       "prefill_tokens_per_s": 2.0})
    assert config.capacities() == {"hbm": 2, "dram": 1, "disk": 1}
    out = simulate([[r] for r in [1, 2, 3, 1, 4, 1, 2]], config).to_dict()
    # 4 demotions + 1 dram promotion cross hbm<->dram; 2 demotions to disk + 1 disk promotion (which crosses both)
    assert out["bytes_moved"] == {"hbm<->dram": (4 + 1 + 1) * 32, "dram<->disk": (2 + 1) * 32}
    profile = load_profile("h100-sxm")
    transfer = 6 * 32 / profile.host_link_bandwidth + 3 * 32 / profile.nvme_bandwidth
    assert out["modelled_time_s"] == {"transfer": round(transfer, 6), "prefill": 2.0}  # 4 missed tokens at 2/s


def test_the_output_has_exactly_the_documented_fields():
    out = run([1, 2, 1], hbm=4)
    assert list(out) == ["requests", "block_size", "policy", "blocks", "tokens", "demotions", "promotions", "drops",
                         "bytes_moved", "modelled_time_s"]
    assert out["bytes_moved"] == {"hbm<->dram": 0, "dram<->disk": 0}  # no model shape: bytes are not known


@pytest.mark.parametrize("config, message", [
    ({"capacity_blocks": {"hbm": 4}, "capacity_bytes": {"hbm": 4}}, "exactly one"),
    ({"capacity_blocks": {"hbm": 0}}, "at least one block"),
    ({"capacity_blocks": {"hbm": 4, "nvme": 1}}, "unknown tiers"),
    ({"capacity_bytes": {"hbm": 4096}}, "model shape"),
    ({"capacity_blocks": {"hbm": 4}, "policy": "mru"}, "unknown policy"),
    ({"capacity_blocks": {"hbm": 4}, "profile": "tpu"}, "unknown hardware profile"),
    ({"capacity_blocks": {"hbm": "4"}}, "must be an integer"),
    ({"capacity_blocks": {"hbm": 4}, "blocksize": 8}, "unknown field"),
])
def test_a_bad_config_is_refused_naming_what_is_wrong(config, message):
    with pytest.raises(ValueError, match=message):
        SimulateConfig.from_dict(config)


@pytest.mark.parametrize("line", ['{"tokens": [1, 2.5]}', '{"tokens": "12"}', '{"tokens": [[1, 2]]}',
                                  '{"tokens": [-1]}', '[1, 2]', '{"id": 1}', '{"tokens": [1e400]}', "{"])
def test_a_bad_trace_line_is_refused_with_its_number(line):
    with pytest.raises(TraceError, match="^line 2: "):
        list(read_trace(['{"id": 1, "tokens": [1, 2]}', line]))


def test_the_command_prints_the_json_and_refuses_bad_input_in_one_line(tmp_path):
    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps({"id": i, "tokens": [r]}) + "\n" for i, r in enumerate([1, 2, 3, 1, 4, 1, 2])))
    config = tmp_path / "config.yaml"
    config.write_text("block_size: 1\ncapacity_blocks: {hbm: 2, dram: 1, disk: 1}\n")
    done = subprocess.run([*CLI, "simulate", "--trace", str(trace), "--config", str(config)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["blocks"]["hit"] == {"hbm": 1, "dram": 1, "disk": 1}
    config.write_text("capacity_blocks: {hbm: 2}\npolicy: fifo\n")
    bad = subprocess.run([*CLI, "simulate", "--trace", str(trace), "--config", str(config)], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown policy 'fifo'" in bad.stderr
    trace.write_text('{"tokens": [1]}\nnot json\n')
    config.write_text("capacity_blocks: {hbm: 2}\n")
    bad = subprocess.run([*CLI, "simulate", "--trace", str(trace), "--config", str(config)], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == f"tiered-kv-cache: error: {trace}: line 2: not valid JSON"


def test_the_synthetic_trace_shares_each_records_prefix_among_its_agents():
    done = subprocess.run([*CLI, "trace", "--records", "2", "--agents", "3", "--turns", "2", "--scan-every", "0"],
                          capture_output=True, text=True, check=True)
    requests = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(requests) == 2 * 3 * 2
    firsts = [r["tokens"] for r in requests if r["id"].startswith("r0-") and r["id"].endswith("-t0")]
    assert len(firsts) == 3 and len({tuple(t[:300]) for t in firsts}) == 1  # system prompt + task, shared
    second = next(r["tokens"] for r in requests if r["id"] == "r0-a0-t1")
    first = next(r["tokens"] for r in requests if r["id"] == "r0-a0-t0")
    assert second[: len(first)] == first  # a later turn extends the agent's previous prompt
