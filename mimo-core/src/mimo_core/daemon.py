"""The shared embedded engine: one `mimo-engine serve` process per cache dir, found or started under a lock."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from filelock import FileLock

from .settings import Settings

STARTUP_TIMEOUT_S = 120.0


class EngineError(RuntimeError):
    """The embedded engine could not be found or started."""


@dataclass
class EngineState:
    """Where the shared engine listens; kept in `<cache_dir>/engine/state.json`."""

    pid: int
    port: int
    started_at: float

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EngineState":
        return cls(pid=int(data["pid"]), port=int(data["port"]), started_at=float(data["started_at"]))


def engine_dir(settings: Settings) -> Path:
    """The folder holding the engine's state file, lock and log."""
    return settings.cache_dir / "engine"


def read_state(settings: Settings) -> EngineState | None:
    """The recorded engine, or None if there is none or its file is unreadable."""
    try:
        return EngineState.from_dict(json.loads((engine_dir(settings) / "state.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_engine_process(pid: int) -> bool:
    """Alive, not a zombie, and running mimo_engine (a recycled pid must never be signalled)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and b"mimo_engine" in cmdline


def is_healthy(state: EngineState, timeout_s: float = 2.0) -> bool:
    """Whether the recorded process is alive and answers its health check."""
    if not is_engine_process(state.pid):
        return False
    try:
        return httpx.get(f"http://127.0.0.1:{state.port}/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(settings: Settings) -> EngineState:
    if importlib.util.find_spec("mimo_engine") is None:
        raise EngineError(
            "MIMO_BASE_URL is unset and the embedded engine is not installed: "
            "run `pip install -r requirements.txt`, or point MIMO_BASE_URL at a server"
        )
    folder = engine_dir(settings)
    port = _free_port()
    command = [
        sys.executable, "-m", "mimo_engine", "serve",
        "--host", "127.0.0.1", "--port", str(port),
        "--idle-timeout", str(settings.engine_idle_timeout_s),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MIMO_API_KEY"}  # the engine needs no key: never hand it one
    env["MIMO_CACHE_DIR"] = str(settings.cache_dir)
    with open(folder / "engine.log", "ab") as log:
        # A session of its own: the engine outlives the tool that started it and serves the whole pipe.
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True
        )
    state = EngineState(pid=process.pid, port=port, started_at=time.time())
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (folder / "engine.log").read_text(errors="replace").strip().splitlines()[-1:]
            raise EngineError(f"the embedded engine exited at start (code {process.returncode}): {' '.join(tail)}")
        if is_healthy(state, timeout_s=1.0):
            return state
        time.sleep(0.2)
    process.kill()
    raise EngineError(f"the embedded engine did not answer within {STARTUP_TIMEOUT_S:.0f} s; see {folder / 'engine.log'}")


def ensure_engine(settings: Settings) -> str:
    """The base URL of the shared engine, started if no healthy one is recorded; safe across processes."""
    folder = engine_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / "daemon.lock"), timeout=STARTUP_TIMEOUT_S + 30):
        state = read_state(settings)
        if state is not None and is_healthy(state):
            return state.base_url
        if state is not None:
            _stop_pid(state.pid)  # recorded but not answering: hung or half-dead, so replace it
        state = _start(settings)
        tmp = folder / "state.json.tmp"
        tmp.write_text(json.dumps(state.to_dict()))
        os.replace(tmp, folder / "state.json")
        return state.base_url


def _stop_pid(pid: int) -> bool:
    if not is_engine_process(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and is_engine_process(pid):
        time.sleep(0.1)
    if is_engine_process(pid):
        os.kill(pid, signal.SIGKILL)
    return True


def stop_engine(settings: Settings) -> bool:
    """Stop the recorded engine; True if one was running."""
    folder = engine_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / "daemon.lock"), timeout=30):
        state = read_state(settings)
        (folder / "state.json").unlink(missing_ok=True)
        return state is not None and _stop_pid(state.pid)
