"""The disk tier's files: a block becomes visible only once whole and checked, and is never served if it fails.

One file per block: a header (format, the model fingerprint's digest, the block hash, dtype, shape), the keys and
values, and a BLAKE2b checksum of all of it. It is written under a temporary name, flushed to the disk (fsync),
renamed into place, and its folder synced, so a reader sees the whole block or nothing, even after `kill -9` or a
power cut. A read checks the format, fingerprint, hash, layout and checksum before it hands out one value; a file
that fails is deleted and counted. Files live under `<root>/<fingerprint digest>/<2 hex digits>/<hash>.kvb`, so
blocks of another model, KV dtype or block size are not even looked at. Keys and values reveal the prompt they came
from: files and folders are private to the user.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mimo_core.contract import Contract
from tiered_kv_cache.blocks import BlockHash, root_hash

MAGIC = b"MIMOKV1\n"
SUFFIX = ".kvb"
TEMP_SUFFIX = ".tmp"
CHECKSUM_BYTES = 32
MAX_HEADER_BYTES = 1024
MAX_FILE_BYTES = 1 << 30  # no block is near this; a larger file is not read into memory at all
STALE_TEMP_S = 3600.0  # a temporary file this old is a crash's leftover even if its writer's pid was reused
MODEL_FILE = "model.json"


class CorruptBlock(ValueError):
    """A block file that fails a check; the message says which."""


def fingerprint_digest(fingerprint: str) -> str:
    """The folder name of a model fingerprint's blocks: the hex digest its hash chains start from."""
    return root_hash(fingerprint).hex()


def encode_block(digest: str, key: BlockHash, data: np.ndarray) -> bytes:
    """A block file's bytes: magic, header length, header, keys and values, checksum."""
    header = json.dumps({"fingerprint": digest, "hash": key.hex(), "dtype": data.dtype.str,
                         "shape": list(data.shape)}).encode()
    body = MAGIC + len(header).to_bytes(4, "little") + header + np.ascontiguousarray(data).tobytes()
    return body + hashlib.blake2b(body, digest_size=CHECKSUM_BYTES).digest()


def decode_block(blob: bytes, digest: str, key: BlockHash, shape: tuple[int, ...] | None = None,
                 dtype: str | None = None) -> np.ndarray:
    """The keys and values in a block file's bytes, after every check; CorruptBlock names the first that fails."""
    if len(blob) < len(MAGIC) + 4 + CHECKSUM_BYTES or not blob.startswith(MAGIC):
        raise CorruptBlock("not a block file")
    body, checksum = blob[:-CHECKSUM_BYTES], blob[-CHECKSUM_BYTES:]
    if hashlib.blake2b(body, digest_size=CHECKSUM_BYTES).digest() != checksum:
        raise CorruptBlock("checksum mismatch")
    size = int.from_bytes(body[len(MAGIC) : len(MAGIC) + 4], "little")
    if size > MAX_HEADER_BYTES:
        raise CorruptBlock("header too large")
    start = len(MAGIC) + 4
    try:
        header = json.loads(body[start : start + size])
        stored = np.dtype(header["dtype"])
        found = tuple(int(n) for n in header["shape"])
        if header["fingerprint"] != digest or header["hash"] != key.hex():
            raise CorruptBlock("a block of another model or prefix")
        data = np.frombuffer(body, dtype=stored, offset=start + size).reshape(found)
    except CorruptBlock:
        raise
    except (ValueError, TypeError, KeyError) as exc:  # a checksummed but ill-formed file: written by something else
        raise CorruptBlock(f"bad header ({type(exc).__name__})") from None
    if (shape is not None and found != tuple(shape)) or (dtype is not None and data.dtype != np.dtype(dtype)):
        raise CorruptBlock(f"layout {found} {data.dtype}, expected {shape} {dtype}")
    return data


def write_atomic(path: Path, blob: bytes) -> None:
    """Write `blob` at `path` so that `path` holds all of it or does not exist: temporary file, fsync, rename,
    folder fsync."""
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _fsync_dir(path.parent.parent)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_bounded(path: Path) -> bytes:
    """A file's bytes, refusing one larger than any block file could be (CorruptBlock)."""
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size > MAX_FILE_BYTES:
            raise CorruptBlock("file too large")
        return handle.read()


def is_stale_temp(path: Path, now: float) -> bool:
    """A temporary file whose writer is gone (its pid is not alive) or that is older than any write takes."""
    try:
        pid = int(path.name.rsplit(".", 3)[-3])
        age = now - path.stat().st_mtime
    except (ValueError, IndexError, OSError):
        return True
    if age > STALE_TEMP_S:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def block_key(path: Path) -> BlockHash | None:
    """The block hash a file is named after, or None if its name is not a block file's."""
    stem = path.name.removesuffix(SUFFIX)
    if not path.name.endswith(SUFFIX) or len(stem) != 32:
        return None
    try:
        return bytes.fromhex(stem)
    except ValueError:
        return None


class DiskStore:
    """The block files of one model fingerprint under `root`; `shape` and `dtype`, when given, are the only layout
    served."""

    def __init__(self, root: Path, fingerprint: str, shape: tuple[int, ...] | None = None,
                 dtype: str | None = None) -> None:
        self.digest = fingerprint_digest(fingerprint)
        self.folder = Path(root) / self.digest
        self.shape = shape
        self.dtype = dtype
        self.corrupt = 0  # files that failed a check and were deleted
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        described = self.folder / MODEL_FILE
        if not described.is_file():
            write_atomic(described, json.dumps({"fingerprint": fingerprint}).encode())

    def path(self, key: BlockHash) -> Path:
        """Where the block `key` lives."""
        name = key.hex()
        return self.folder / name[:2] / f"{name}{SUFFIX}"

    def scan(self) -> list[BlockHash]:
        """The blocks on disk, least recently written first; leftovers of interrupted writes are removed."""
        found = []
        now = time.time()
        for path in _files(self.folder):
            if path.name.endswith(TEMP_SUFFIX):
                if is_stale_temp(path, now):
                    path.unlink(missing_ok=True)
            elif (key := block_key(path)) is not None:
                try:
                    found.append((path.stat().st_mtime_ns, key))
                except OSError:  # removed meanwhile (gc, another engine)
                    continue
        return [key for _, key in sorted(found)]

    def put(self, key: BlockHash, data: np.ndarray) -> None:
        """Store a block durably (see the module docstring)."""
        write_atomic(self.path(key), encode_block(self.digest, key, data))

    def take(self, key: BlockHash) -> np.ndarray | None:
        """Read, check and delete the block `key`; None if it is gone or failed a check (then it is deleted)."""
        path = self.path(key)
        try:
            data = decode_block(read_bounded(path), self.digest, key, self.shape, self.dtype)
        except FileNotFoundError:
            return None
        except (CorruptBlock, OSError):
            self.corrupt += 1
            path.unlink(missing_ok=True)
            return None
        path.unlink(missing_ok=True)
        return data.copy()  # a view of the file's bytes would be read-only

    def drop(self, key: BlockHash) -> None:
        """Delete the block `key` if it is there."""
        self.path(key).unlink(missing_ok=True)


def _files(folder: Path) -> Iterator[Path]:
    """Every file one or two levels under `folder` (block files and temporaries), never following links."""
    if not folder.is_dir():
        return
    for sub in folder.iterdir():
        if sub.is_dir() and not sub.is_symlink():
            yield from (p for p in sub.iterdir() if p.is_file() and not p.is_symlink())


# ---------------------------------------------------------------- inspect and gc, engine running or not


@dataclass
class ModelBlocks(Contract):
    """The disk tier's blocks of one model fingerprint."""

    digest: str
    fingerprint: str | None
    blocks: int = 0
    bytes: int = 0
    oldest_s: float | None = None  # seconds since the oldest block was written
    newest_s: float | None = None
    temp_files: int = 0
    corrupt: int | None = None  # checked with --verify only


@dataclass
class DiskInventory(Contract):
    """What the disk tier holds under one root."""

    SCHEMA = "mimo.kv-disk/1"

    root: str
    blocks: int = 0
    bytes: int = 0
    models: list[ModelBlocks] = field(default_factory=list)


@dataclass
class Collected(Contract):
    """What `gc` removed (or, with `dry_run`, would remove) and what it kept."""

    SCHEMA = "mimo.kv-gc/1"

    root: str
    dry_run: bool
    removed_blocks: int = 0
    removed_bytes: int = 0
    corrupt: int = 0
    expired: int = 0
    over_size: int = 0
    temp_files: int = 0
    kept_blocks: int = 0
    kept_bytes: int = 0


@dataclass(frozen=True)
class _BlockFile:
    path: Path
    digest: str
    key: BlockHash
    size: int
    mtime: float


def _model_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and len(p.name) == 32)


def _block_files(folder: Path) -> tuple[list[_BlockFile], list[Path]]:
    """A fingerprint folder's block files, oldest first, and its temporary files."""
    blocks, temps = [], []
    for path in _files(folder):
        try:
            stat = path.stat()
        except OSError:
            continue
        if path.name.endswith(TEMP_SUFFIX):
            temps.append(path)
        elif (key := block_key(path)) is not None:
            blocks.append(_BlockFile(path, folder.name, key, stat.st_size, stat.st_mtime))
    return sorted(blocks, key=lambda b: b.mtime), temps


def _is_sound(block: _BlockFile) -> bool:
    try:
        decode_block(read_bounded(block.path), block.digest, block.key)
    except (CorruptBlock, OSError):
        return False
    return True


def _described(folder: Path) -> str | None:
    try:
        fingerprint = json.loads((folder / MODEL_FILE).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return fingerprint if isinstance(fingerprint, str) else None


def inspect_disk(root: Path, verify: bool = False) -> DiskInventory:
    """Count the disk tier's blocks per model under `root`; `verify` also reads and checks every block."""
    now = time.time()
    inventory = DiskInventory(str(root))
    for folder in _model_folders(root):
        blocks, temps = _block_files(folder)
        model = ModelBlocks(folder.name, _described(folder), len(blocks), sum(b.size for b in blocks),
                            temp_files=len(temps))
        if blocks:
            model.oldest_s, model.newest_s = round(now - blocks[0].mtime, 3), round(now - blocks[-1].mtime, 3)
        if verify:
            model.corrupt = sum(not _is_sound(b) for b in blocks)
        inventory.models.append(model)
        inventory.blocks += model.blocks
        inventory.bytes += model.bytes
    return inventory


def collect_disk(root: Path, max_bytes: int | None = None, max_age_s: float | None = None, verify: bool = False,
                 dry_run: bool = False) -> Collected:
    """Remove crash leftovers, blocks failing their check (`verify`), blocks older than `max_age_s`, then the oldest
    blocks until at most `max_bytes` remain. Safe while an engine runs: it treats a vanished file as a miss."""
    now = time.time()
    report = Collected(str(root), dry_run)
    kept: list[_BlockFile] = []

    def remove(path: Path, size: int) -> None:
        report.removed_bytes += size
        if not dry_run:
            path.unlink(missing_ok=True)

    for folder in _model_folders(root):
        blocks, temps = _block_files(folder)
        for temp in temps:
            if is_stale_temp(temp, now):
                report.temp_files += 1
                remove(temp, 0)
        for block in blocks:
            if verify and not _is_sound(block):
                report.corrupt += 1
            elif max_age_s is not None and now - block.mtime > max_age_s:
                report.expired += 1
            else:
                kept.append(block)
                continue
            report.removed_blocks += 1
            remove(block.path, block.size)
    kept.sort(key=lambda b: b.mtime)
    total = sum(b.size for b in kept)
    while max_bytes is not None and kept and total > max_bytes:
        block = kept.pop(0)
        total -= block.size
        report.over_size += 1
        report.removed_blocks += 1
        remove(block.path, block.size)
    report.kept_blocks, report.kept_bytes = len(kept), total
    return report
