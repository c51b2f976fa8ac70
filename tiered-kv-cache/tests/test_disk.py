"""The disk tier's files: whole or absent, checked before served, private, and safe to inspect and collect."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tiered_kv_cache.blocks import block_hashes, root_hash
from tiered_kv_cache.disk import (
    TEMP_SUFFIX,
    DiskStore,
    collect_disk,
    decode_block,
    encode_block,
    fingerprint_digest,
    inspect_disk,
)

SHAPE = (2, 3, 2, 4, 8)  # [k/v, layers, kv heads, block size, head dim]
CLI = [sys.executable, "-c", "from tiered_kv_cache.cli import main; main()"]


def block(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def key(seed: int) -> bytes:
    return block_hashes(root_hash("model"), [seed] * 4, 4)[0]


def test_a_block_round_trips_and_leaves_the_disk_when_taken(tmp_path):
    store = DiskStore(tmp_path, "model", SHAPE, "float32")
    store.put(key(1), block(1))
    assert store.scan() == [key(1)]
    np.testing.assert_array_equal(store.take(key(1)), block(1))
    assert store.take(key(1)) is None and store.scan() == [] and store.corrupt == 0
    assert oct(store.path(key(1)).parent.stat().st_mode & 0o777) == "0o700"


def test_files_are_private(tmp_path):
    store = DiskStore(tmp_path, "model", SHAPE)
    store.put(key(1), block(1))
    assert store.path(key(1)).stat().st_mode & 0o077 == 0 and store.folder.stat().st_mode & 0o077 == 0


def flip_last_value_byte(path):
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x01  # inside the values, before the 32-byte checksum
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [
    flip_last_value_byte,
    lambda p: p.write_bytes(p.read_bytes()[:-100]),  # a torn write
    lambda p: p.write_bytes(b""),
    lambda p: p.write_bytes(b"MIMOKV1\n" + b"\xff" * 100),  # a header length far past the file
    lambda p: p.write_bytes(os.urandom(5000)),
])
def test_a_damaged_block_is_never_served_and_is_deleted_and_counted(tmp_path, damage):
    store = DiskStore(tmp_path, "model", SHAPE, "float32")
    store.put(key(1), block(1))
    store.put(key(2), block(2))
    damage(store.path(key(1)))
    assert store.take(key(1)) is None and not store.path(key(1)).exists() and store.corrupt == 1
    np.testing.assert_array_equal(store.take(key(2)), block(2))


def test_a_sound_file_of_another_block_model_or_layout_is_never_served(tmp_path):
    store = DiskStore(tmp_path, "model", SHAPE, "float32")
    store.put(key(1), block(1))
    store.path(key(2)).parent.mkdir(exist_ok=True)
    os.replace(store.path(key(1)), store.path(key(2)))
    assert store.take(key(2)) is None and store.corrupt == 1  # a checksummed file renamed to another block's name
    other = DiskStore(tmp_path, "another-model", SHAPE, "float32")
    other.put(key(3), block(3))
    os.makedirs(store.path(key(3)).parent, exist_ok=True)
    os.replace(other.path(key(3)), store.path(key(3)))
    assert store.take(key(3)) is None and store.corrupt == 2  # copied in from another fingerprint's folder
    store.put(key(4), block(4).reshape(2, 3, 2, 8, 4))
    assert store.take(key(4)) is None and store.corrupt == 3  # a layout this engine does not use
    store.put(key(5), block(5).astype(np.float64))
    assert store.take(key(5)) is None and store.corrupt == 4


def test_a_checksummed_but_hostile_header_is_refused():
    digest = fingerprint_digest("model")
    good = encode_block(digest, key(1), block(1))
    np.testing.assert_array_equal(decode_block(good, digest, key(1), SHAPE, "float32"), block(1))

    for header in [b'{"fingerprint": 1}', b"[]", json.dumps({"fingerprint": digest, "hash": key(1).hex(),
                   "dtype": "O", "shape": [1]}).encode(), json.dumps({"fingerprint": digest, "hash": key(1).hex(),
                   "dtype": "<f4", "shape": [10 ** 12]}).encode()]:
        body = b"MIMOKV1\n" + len(header).to_bytes(4, "little") + header + b"\0" * 64
        blob = body + hashlib.blake2b(body, digest_size=32).digest()
        with pytest.raises(ValueError):
            decode_block(blob, digest, key(1))


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from tiered_kv_cache.blocks import block_hashes, root_hash
    from tiered_kv_cache.disk import DiskStore
    store = DiskStore(sys.argv[1], "model", (2, 3, 2, 4, 8), "float32")
    for i in range(100000):
        data = np.full((2, 3, 2, 4, 8), i, dtype=np.float32)
        store.put(block_hashes(root_hash("model"), [i] * 4, 4)[0], data)
        print(i, flush=True)
""")


def test_kill_9_during_writes_leaves_only_whole_blocks_which_are_all_served(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    written = [int(writer.stdout.readline()) for _ in range(30)]  # these are on disk for sure
    time.sleep(0.05)  # and it is somewhere in the middle of another write
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    store = DiskStore(tmp_path, "model", SHAPE, "float32")
    on_disk = store.scan()
    assert not list(store.folder.rglob(f"*{TEMP_SUFFIX}"))  # its writer is dead: the leftover is removed
    served = {}
    for k in on_disk:
        data = store.take(k)
        assert data is not None and (data == data.flat[0]).all()
        served[k] = int(data.flat[0])
    assert store.corrupt == 0 and all(served[key_of(i)] == i for i in written) and len(served) >= 30
    for k, i in served.items():
        assert k == key_of(i)  # every file holds the block its name says


def key_of(i: int) -> bytes:
    return block_hashes(root_hash("model"), [i] * 4, 4)[0]


def test_inspect_and_gc_by_age_size_and_check_and_dry_run(tmp_path):
    store = DiskStore(tmp_path, "model", SHAPE, "float32")
    for i in range(6):
        store.put(key(i), block(i))
        os.utime(store.path(key(i)), (time.time() - (6 - i) * 86400,) * 2)  # block i written 6 - i days ago
    flip_last_value_byte(store.path(key(5)))
    (store.path(key(0)).parent / f".x.kvb.999999999.abcd{TEMP_SUFFIX}").write_bytes(b"half")  # a dead writer's
    size = store.path(key(1)).stat().st_size
    seen = inspect_disk(tmp_path, verify=True).to_dict()
    assert seen["blocks"] == 6 and seen["models"][0]["fingerprint"] == "model"
    assert seen["models"][0]["corrupt"] == 1 and seen["models"][0]["temp_files"] == 1
    files = sorted(store.folder.rglob("*.*"))
    dry = collect_disk(tmp_path, max_age_s=4.5 * 86400, dry_run=True)
    assert dry.expired == 2 and dry.temp_files == 1 and sorted(store.folder.rglob("*.*")) == files  # nothing removed
    # blocks 0 and 1 are older than 4.5 days, 5 fails its check, and of 2, 3, 4 the oldest is past the size cap
    done = collect_disk(tmp_path, max_bytes=2 * size, max_age_s=4.5 * 86400, verify=True)
    assert (done.temp_files, done.corrupt, done.expired, done.over_size) == (1, 1, 2, 1)
    assert done.kept_blocks == 2 and done.kept_bytes == 2 * size and done.removed_blocks == 4
    assert store.scan() == [key(3), key(4)]


def test_the_commands_work_on_a_folder(tmp_path):
    store = DiskStore(tmp_path, "model", SHAPE)
    store.put(key(1), block(1))
    seen = json.loads(subprocess.run([*CLI, "inspect", "--dir", str(tmp_path)], capture_output=True, text=True,
                                     check=True).stdout)
    assert seen["schema"] == "mimo.kv-disk/1" and seen["blocks"] == 1
    done = json.loads(subprocess.run([*CLI, "gc", "--dir", str(tmp_path), "--max-gib", "0"], capture_output=True,
                                     text=True, check=True).stdout)
    assert done["removed_blocks"] == 1 and store.scan() == []
    bad = subprocess.run([*CLI, "gc", "--max-gib", "-1"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("tiered-kv-cache: error:") and bad.stderr.count("\n") == 1
