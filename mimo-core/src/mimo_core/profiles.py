"""Hardware profiles: memory tiers' capacities and bandwidths, shipped as YAML or measured on this machine."""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from .contract import Contract

THIS_MACHINE = "this-machine"
CPU_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")
FALLBACK_BUFFER_BYTES = 256 << 20  # where the cache size cannot be read: larger than any CPU's last-level cache
MIN_BUFFER_BYTES = 64 << 20
CACHE_MULTIPLE = 4  # the buffer is this many last-level caches, so that a pass streams from DRAM, not from cache
SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@dataclass(frozen=True)
class HardwareProfile(Contract):
    """Capacities (bytes) and bandwidths (bytes/s) of the tiers a KV block can live in: HBM, DRAM, NVMe.

    `hbm_bytes` is None where there is no accelerator memory (this machine measured without a GPU)."""

    name: str
    description: str
    gpus: int
    hbm_bytes: float | None
    hbm_bandwidth: float
    dram_bytes: float
    dram_bandwidth: float
    host_link_bandwidth: float
    nvme_bytes: float
    nvme_bandwidth: float
    nvlink_bandwidth: float | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str | None = None) -> "HardwareProfile":
        """The profile from its YAML's dict, validated (see `Contract.from_dict`); YAML reads `80.0e9` as a string,
        so a string in a numeric field is read as a number first."""
        if isinstance(data, dict):
            numeric = {f.name for f in fields(cls)} - {"name", "description", "gpus"}
            data = {k: _number(v) if k in numeric else v for k, v in data.items()}
        return super().from_dict(data, where)


def _number(value: Any) -> Any:
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value  # not a number: the contract says so


def shipped_profiles() -> list[str]:
    """Names of the profiles shipped with the package, plus `this-machine`."""
    folder = resources.files("mimo_core") / "profiles"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")) + [THIS_MACHINE]


def load_profile(name: str, cache_dir: Path | None = None, remeasure: bool = False) -> HardwareProfile:
    """A profile by name; `this-machine` is measured once and kept in `<cache_dir>/profiles/`."""
    if name == THIS_MACHINE:
        if cache_dir is None:
            return measure_this_machine(Path(tempfile.gettempdir()))
        cached = cache_dir / "profiles" / f"{THIS_MACHINE}.yaml"
        if cached.is_file() and not remeasure:
            return HardwareProfile.from_dict(yaml.safe_load(cached.read_text()))
        profile = measure_this_machine(cache_dir)
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(yaml.safe_dump(profile.to_dict(), sort_keys=False))
        return profile
    resource = resources.files("mimo_core") / "profiles" / f"{name}.yaml"
    if not resource.is_file():
        raise ValueError(f"unknown hardware profile {name!r}; known: {', '.join(shipped_profiles())}")
    return HardwareProfile.from_dict(yaml.safe_load(resource.read_text()))


def timings(run: Callable[[], object], repeats: int = 5) -> list[float]:
    """Wall times of `run` over `repeats` calls, after one untimed warm-up (page faults, BLAS threads)."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(run: Callable[[], object], repeats: int = 5) -> float:
    """Median wall time of `run` over `repeats` calls (`timings`)."""
    return float(np.median(timings(run, repeats)))


def best_seconds(run: Callable[[], object], repeats: int = 5) -> float:
    """Shortest wall time of `run` over `repeats` calls (`timings`): other work on the machine can only slow a pass
    down, so the best one is the machine's own speed."""
    return min(timings(run, repeats))


def last_level_cache_bytes(caches: Path = CPU_CACHES) -> int | None:
    """The largest cache of cpu0 in bytes, from sysfs (`index*/size`, such as `32768K`); None where unreadable."""
    sizes = []
    for size_file in caches.glob("index*/size"):
        try:
            text = size_file.read_text().strip()
            sizes.append(int(text[:-1]) * SIZE_UNITS[text[-1]] if text[-1:] in SIZE_UNITS else int(text))
        except (OSError, ValueError):
            continue
    return max(sizes) if sizes else None


def bandwidth_buffer_bytes(llc_bytes: int | None) -> int:
    """Bytes of the buffer a bandwidth pass streams: CACHE_MULTIPLE last-level caches (at least MIN_BUFFER_BYTES),
    or FALLBACK_BUFFER_BYTES where the cache size is unknown."""
    return max(CACHE_MULTIPLE * llc_bytes, MIN_BUFFER_BYTES) if llc_bytes else FALLBACK_BUFFER_BYTES


def measure_memory_bandwidth(size_bytes: int | None = None) -> float:
    """Main-memory copy bandwidth in bytes/s (bytes read plus written): the best of several array copies over a
    buffer far larger than the last-level cache."""
    src = np.ones((size_bytes or bandwidth_buffer_bytes(last_level_cache_bytes())) // 4, dtype=np.float32)
    dst = np.empty_like(src)
    return 2 * src.nbytes / best_seconds(lambda: np.copyto(dst, src))


def measure_read_bandwidth(size_bytes: int | None = None, threads: int | None = None) -> float:
    """Streaming-read bandwidth in bytes/s: the best of several float32 matrix-vector products over a buffer far
    larger than the last-level cache, on `threads` BLAS threads (default every core): the read decoding does with
    its weights (one thread would measure one core's share)."""
    from threadpoolctl import threadpool_limits

    size = size_bytes or bandwidth_buffer_bytes(last_level_cache_bytes())
    matrix = np.ones((size // 4 // 4096, 4096), dtype=np.float32)  # 4096: the fastest row length measured
    vector = np.ones(4096, dtype=np.float32)
    with threadpool_limits(limits=threads or os.cpu_count() or 1, user_api="blas"):
        return matrix.nbytes / best_seconds(lambda: matrix @ vector)


def measure_disk_read_bandwidth(folder: Path, size_bytes: int = 128 << 20) -> float:
    """Sequential read bandwidth of the disk under `folder` in bytes/s, with the page cache dropped first."""
    folder.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1 << 20)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".bandwidth-") as handle:
        for _ in range(size_bytes // len(block)):
            handle.write(block)
        handle.flush()
        os.fsync(handle.fileno())

        def read_cold() -> None:
            # Without dropping the cached pages this would measure DRAM again, not the disk.
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            with open(handle.name, "rb", buffering=0) as reader:
                while reader.read(4 << 20):
                    pass

        return size_bytes / median_seconds(read_cold, repeats=3)


def measure_this_machine(cache_dir: Path) -> HardwareProfile:
    """Measure this machine: no accelerator memory; DRAM (a streaming read: what decoding does) and disk measured;
    the host link is a memory copy."""
    read_bandwidth, copy_bandwidth = measure_read_bandwidth(), measure_memory_bandwidth()
    return HardwareProfile(
        name=THIS_MACHINE,
        description=f"{platform.node()}: {os.cpu_count()} CPUs, measured {time.strftime('%Y-%m-%d')}, no GPU",
        gpus=0,
        hbm_bytes=None,
        hbm_bandwidth=read_bandwidth,  # the engine's working set lives in RAM, so its "HBM" runs at RAM speed
        dram_bytes=float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")),
        dram_bandwidth=read_bandwidth,
        host_link_bandwidth=copy_bandwidth,
        nvme_bytes=float(shutil.disk_usage(cache_dir if cache_dir.exists() else Path.home()).free),
        nvme_bandwidth=measure_disk_read_bandwidth(cache_dir / "profiles"),
    )
