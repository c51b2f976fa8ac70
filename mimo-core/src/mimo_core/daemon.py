"""The shared embedded engine: one `mimo-engine serve` process per cache dir, found or started under a lock.

It serves the models the settings name (oracle and draft), loading each on its first request. A tool whose settings
name another model gets an engine serving both sets; the old engine is stopped if idle, or else left to finish its
work and exit on its idle timeout. An engine slow to answer its health check is busy, not hung: it is replaced only
after `HUNG_AFTER_S` without an answer.
"""

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
HEALTH_TIMEOUT_S = 2.0
HUNG_AFTER_S = 30.0  # a live engine that has not answered /health for this long is taken as hung
STOP_TIMEOUT_S = 30.0  # SIGTERM lets requests in flight drain (the engine's default is 10 s), then SIGKILL
LOG_MAX_BYTES = 8 << 20  # past this, engine.log moves to engine.log.1 when the next engine starts


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


def engine_health(state: EngineState, timeout_s: float = HEALTH_TIMEOUT_S, patience_s: float = 0.0) -> dict | None:
    """The engine's /health answer, or None if its process is gone or it refuses connections. A live engine that
    does not answer within `timeout_s` is asked again until `patience_s` have passed: busy is not hung."""
    deadline = time.monotonic() + patience_s
    while is_engine_process(state.pid):
        try:
            response = httpx.get(f"http://127.0.0.1:{state.port}/health", timeout=timeout_s)
            return response.json() if response.status_code == 200 else None
        except httpx.TimeoutException:
            if time.monotonic() >= deadline:
                return None
        except (httpx.HTTPError, ValueError):
            return None
    return None


def is_healthy(state: EngineState, timeout_s: float = HEALTH_TIMEOUT_S) -> bool:
    """Whether the recorded process is alive and answers its health check."""
    return engine_health(state, timeout_s) is not None


def engine_models(settings: Settings) -> list[str]:
    """The models the shared engine must serve for these settings: the oracle and the draft model."""
    return sorted({settings.oracle_model, settings.drafter_model})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(settings: Settings, models: list[str]) -> EngineState:
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
        *(arg for name in models for arg in ("--allow", name)),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MIMO_API_KEY"}  # the engine needs no key: never hand it one
    env["MIMO_CACHE_DIR"] = str(settings.cache_dir)
    log_path = folder / "engine.log"
    if log_path.is_file() and log_path.stat().st_size > LOG_MAX_BYTES:
        os.replace(log_path, folder / "engine.log.1")
    with open(log_path, "ab") as log:
        # A session of its own: the engine outlives the tool that started it and serves the whole pipe.
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True
        )
    state = EngineState(pid=process.pid, port=port, started_at=time.time())
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
            raise EngineError(f"the embedded engine exited at start (code {process.returncode}): {' '.join(tail)}")
        if is_healthy(state, timeout_s=1.0):
            return state
        time.sleep(0.2)
    process.kill()
    raise EngineError(f"the embedded engine did not answer within {STARTUP_TIMEOUT_S:.0f} s; see {log_path}")


def ensure_engine(settings: Settings) -> str:
    """The base URL of the shared engine serving the settings' models, started (or replaced, see the module's
    docstring) when the recorded one is gone, hung, or serves other models; safe across processes."""
    folder = engine_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / "daemon.lock"), timeout=STARTUP_TIMEOUT_S + HUNG_AFTER_S + STOP_TIMEOUT_S + 30):
        state = read_state(settings)
        health = engine_health(state, patience_s=HUNG_AFTER_S) if state is not None else None
        served = set(health.get("models_served", ())) if health else set()
        wanted = set(engine_models(settings))
        if state is not None and health is not None and wanted <= served:
            return state.base_url
        if state is not None and not (health and health.get("busy")):
            _stop_pid(state.pid)  # gone, hung, or idle; a busy one finishes its work and exits when idle
        state = _start(settings, sorted(wanted | served))
        tmp = folder / "state.json.tmp"
        tmp.write_text(json.dumps(state.to_dict()))
        os.replace(tmp, folder / "state.json")
        return state.base_url


def _stop_pid(pid: int) -> bool:
    if not is_engine_process(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
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
