"""The shared embedded engine: one `mimo-engine serve` process per cache dir, found or started under a lock.

It serves the models the settings name (oracle and draft). A tool whose settings name another model (or other
precision policies or threads) gets an engine serving both sets of models; the old engine is stopped if idle, or else
left to finish its work and exit on its idle timeout. An engine slow to answer its health check is busy, not hung: it
is replaced only after `HUNG_AFTER_S` without an answer.

Once it has the engine, `ensure_engine` asks it to load the settings' models (`POST /load`) and waits until they are
ready, saying on the tool's stderr what it waits for (the engine starting, a model pulling with its megabytes,
loading) and where the engine's log is: a live line on a terminal, else a line when that changes and every
`SAY_EVERY_S`; nothing when all is ready at once. So loading happens while the tool says so, not silently inside its
first request. Tools that find another tool starting the engine or loading its models wait for it, and say that.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

import httpx
from filelock import FileLock, Timeout
from rich.console import Console
from rich.markup import escape

from .contract import Contract, ContractError
from .settings import Settings

STARTUP_TIMEOUT_S = 120.0
HEALTH_TIMEOUT_S = 2.0
HUNG_AFTER_S = 30.0  # a live engine that has not answered /health for this long is taken as hung
STOP_TIMEOUT_S = 30.0  # SIGTERM lets requests in flight drain (the engine's default is 10 s), then SIGKILL
LOG_MAX_BYTES = 8 << 20  # past this, engine.log moves to engine.log.1 when the next engine starts
START_LOCK_TIMEOUT_S = STARTUP_TIMEOUT_S + HUNG_AFTER_S + STOP_TIMEOUT_S + 30  # one start, and a stop before it
# Pulling 1.1 GB and loading it may take many minutes; a tool waits for another one's loading this long at most.
LOAD_LOCK_TIMEOUT_S = 3600.0
POLL_S = 0.5  # how often a waiting tool asks /health
SAY_EVERY_S = 10.0  # when stderr is not a terminal: a progress line at least this often while nothing changes


class EngineError(RuntimeError):
    """The embedded engine could not be found or started, or could not load a model."""


ModelState = Literal["not_loaded", "pulling", "loading", "ready", "failed"]


@dataclass
class ModelHealth(Contract):
    """One served model as the engine's /health reports it: its state; while pulling, the model file's bytes done
    and total; the seconds it has been pulling or loading (ready: how long its load took); why it failed."""

    state: ModelState = "not_loaded"
    bytes_done: int = 0
    bytes_total: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass
class EngineHealth(Contract):
    """The engine's /health answer: who it is, what it serves and how far each model is, whether it is busy (a
    request in flight, a model loading), and the precision policies and threads it was started with (None: its
    defaults)."""

    pid: int
    status: str = "ok"
    models_loaded: list[str] = field(default_factory=list)
    models_served: list[str] = field(default_factory=list)
    busy: bool = False
    models: dict[str, ModelHealth] = field(default_factory=dict)
    precision_policies: list[str] | None = None
    threads: int | None = None


@dataclass
class EngineState(Contract):
    """Where the shared engine listens; kept in `<cache_dir>/engine/state.json`."""

    pid: int
    port: int
    started_at: float

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def engine_dir(settings: Settings) -> Path:
    """The folder holding the engine's state file, lock and log."""
    return settings.cache_dir / "engine"


def read_state(settings: Settings) -> EngineState | None:
    """The recorded engine, or None if there is none or its file is unreadable."""
    try:
        return EngineState.load(engine_dir(settings) / "state.json")
    except ContractError:
        return None


def is_engine_process(pid: int) -> bool:
    """Alive, not a zombie, and running mimo_engine (a recycled pid must never be signalled)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and b"mimo_engine" in cmdline


def engine_health(state: EngineState, timeout_s: float = HEALTH_TIMEOUT_S,
                  patience_s: float = 0.0) -> EngineHealth | None:
    """The engine's /health answer, or None if its process is gone, it refuses connections or its answer is not an
    engine's. A live engine that does not answer within `timeout_s` is asked again until `patience_s` have passed:
    busy is not hung."""
    deadline = time.monotonic() + patience_s
    while is_engine_process(state.pid):
        try:
            response = httpx.get(f"http://127.0.0.1:{state.port}/health", timeout=timeout_s)
            return EngineHealth.from_dict(response.json()) if response.status_code == 200 else None
        except httpx.TimeoutException:
            if time.monotonic() >= deadline:
                return None
        except (httpx.HTTPError, ValueError):  # ContractError is a ValueError
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


class Waiting:
    """What a tool says on stderr while it waits for the engine: a live line on a terminal, else a line whenever what
    it waits for changes and every `SAY_EVERY_S`; nothing at all when it never has to wait. The API key never
    appears in anything it says: it says models, megabytes, seconds, a pid and the log's path."""

    def __init__(self, prog: str, log_path: Path, stream: TextIO | None = None) -> None:
        self.prog = prog
        self.log_path = log_path
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.said = False
        self._live = None  # rich's status line, on a terminal
        self._key: object = None
        self._last_at = 0.0

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, what: str, key: object = None) -> None:
        """Show that the tool waits for `what` (`key`: what it waits for without the figures that move, such as
        bytes; a line goes out when it changes)."""
        text = f"{self.prog}: waiting for the embedded engine: {what} ({self._elapsed():.0f} s; log: {self.log_path})"
        key = what if key is None else key
        if self._isatty():
            if self._live is None:
                self._live = Console(file=self.stream).status(escape(text))  # a path is text, not markup
                self._live.start()
            else:
                self._live.update(escape(text))
        elif key != self._key or time.monotonic() - self._last_at >= SAY_EVERY_S:
            print(text, file=self.stream, flush=True)
            self._last_at = time.monotonic()
        self._key = key
        self.said = True

    def note(self, line: str) -> None:
        """Say one plain line (no live line), once."""
        self.stop()
        print(f"{self.prog}: {line} (log: {self.log_path})", file=self.stream, flush=True)
        self.said = True

    def stop(self) -> None:
        """End the live line, if there is one."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    def ready(self, models: list[str] | None) -> None:
        """Say the wait is over, with the `models` now loaded (None: none were waited for); only if anything was
        said before."""
        self.stop()
        if self.said:
            what = f"ready, serving {', '.join(models)}" if models else "up"
            print(f"{self.prog}: the embedded engine is {what} (waited {self._elapsed():.0f} s)", file=self.stream,
                  flush=True)

    def _isatty(self) -> bool:
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False


def _prog() -> str:
    """The running tool's name, as its lines start (`precision-router`, `run_pipeline.py`)."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name and name not in {"-c", "-m", "__main__.py"} else "mimo-core"


def _start(settings: Settings, models: list[str], waiting: Waiting) -> EngineState:
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
    if settings.precision_policies is not None:
        command += ["--precision-policies", ",".join(settings.precision_policies)]
    if settings.engine_threads is not None:
        command += ["--threads", str(settings.engine_threads)]
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
        waiting.say(f"starting it (pid {process.pid})", key="start")
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
            raise EngineError(f"the embedded engine exited at start (code {process.returncode}): {' '.join(tail)}")
        if is_healthy(state, timeout_s=1.0):
            return state
        time.sleep(0.2)
    process.kill()
    raise EngineError(f"the embedded engine did not answer within {STARTUP_TIMEOUT_S:.0f} s; see {log_path}")


def _fits(health: EngineHealth, settings: Settings, wanted: set[str]) -> bool:
    """Whether a running engine serves these settings: their models, and the precision policies and threads they
    name (None on both sides: the engine's defaults)."""
    policies = list(settings.precision_policies) if settings.precision_policies is not None else None
    return (wanted <= set(health.models_served) and health.precision_policies == policies
            and health.threads == settings.engine_threads)


def _acquire(lock: FileLock, timeout_s: float, waiting: Waiting, what: str) -> None:
    """Take `lock`; when another tool holds it, say that this one waits for what that tool is doing (`what`)."""
    try:
        lock.acquire(timeout=0)
        return
    except Timeout:
        waiting.note(f"waiting for the embedded engine, which another tool is {what}")
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout:
        raise EngineError(f"another tool has been {what} the embedded engine for {timeout_s:.0f} s; "
                          f"see {waiting.log_path}") from None


def _find_or_start(settings: Settings, waiting: Waiting) -> EngineState:
    """The recorded engine if it is alive and fits the settings; else a new one (see the module's docstring)."""
    folder = engine_dir(settings)
    lock = FileLock(str(folder / "daemon.lock"))
    _acquire(lock, START_LOCK_TIMEOUT_S, waiting, "starting")
    try:
        state = read_state(settings)
        health = engine_health(state, patience_s=HUNG_AFTER_S) if state is not None else None
        wanted = set(engine_models(settings))
        if state is not None and health is not None and _fits(health, settings, wanted):
            return state
        served = set(health.models_served) if health else set()
        if state is not None and not (health and health.busy):
            _stop_pid(state.pid)  # gone, hung, or idle; a busy one finishes its work and exits when idle
        state = _start(settings, sorted(wanted | served), waiting)
        tmp = folder / "state.json.tmp"
        tmp.write_text(json.dumps(state.to_dict()))
        os.replace(tmp, folder / "state.json")
        return state
    finally:
        lock.release()


def describe(models: dict[str, ModelHealth]) -> str:
    """What a tool waits for, model by model: `pulling NAME 120/491 MB`, `loading NAME`, `NAME waits to load`."""
    parts = []
    for name, h in sorted(models.items()):
        if h.state == "pulling":
            parts.append(f"pulling {name} {h.bytes_done / 1e6:.0f}/{h.bytes_total / 1e6:.0f} MB")
        elif h.state == "loading":
            parts.append(f"loading {name}")
        else:
            parts.append(f"{name} waits to load")
    return "; ".join(parts)


def _load_models(state: EngineState, wanted: list[str], waiting: Waiting) -> None:
    """Ask the engine to load `wanted` (those not ready) and wait until every one is ready, saying how far each is.
    EngineError if one fails or the engine goes."""
    gone = EngineError(f"the embedded engine (pid {state.pid}) exited while loading {', '.join(wanted)}; "
                       f"see {waiting.log_path}")
    health = engine_health(state, patience_s=HUNG_AFTER_S)
    if health is None:
        raise gone
    todo = [m for m in wanted if health.models.get(m, ModelHealth()).state != "ready"]
    if not todo:
        return
    try:
        response = httpx.post(f"http://127.0.0.1:{state.port}/load", json={"models": todo}, timeout=HUNG_AFTER_S)
        response.raise_for_status()
        health = EngineHealth.from_dict(response.json())
    except (httpx.HTTPError, ValueError) as exc:
        raise EngineError(f"the embedded engine refused to load {', '.join(todo)}: {exc}; "
                          f"see {waiting.log_path}") from None
    while True:
        models = {m: health.models.get(m, ModelHealth()) for m in wanted}
        for name, h in models.items():
            if h.state == "failed":
                raise EngineError(f"the embedded engine could not load {name}: {h.error}; see {waiting.log_path}")
        pending = {m: h for m, h in models.items() if h.state != "ready"}
        if not pending:
            return
        waiting.say(describe(pending), key=tuple((m, h.state) for m, h in sorted(pending.items())))
        time.sleep(POLL_S)
        health = engine_health(state, patience_s=HUNG_AFTER_S)
        if health is None:
            raise gone


def ensure_engine(settings: Settings, wait_for_models: bool = True, prog: str | None = None) -> str:
    """The base URL of the shared engine serving the settings' models, started (or replaced, see the module's
    docstring) when the recorded one is gone, hung, or does not fit; safe across processes. With
    `wait_for_models`, returns once the settings' models are loaded, saying on stderr what it waits for (`prog`:
    the tool's name those lines start with; default: the running script's)."""
    folder = engine_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    waiting = Waiting(prog or _prog(), folder / "engine.log")
    wanted = engine_models(settings)
    try:
        state = _find_or_start(settings, waiting)
        if wait_for_models:
            health = engine_health(state, patience_s=HUNG_AFTER_S)
            if health is None or any(health.models.get(m, ModelHealth()).state != "ready" for m in wanted):
                # one tool loads at a time, saying so; the others wait for it, then find the models ready
                lock = FileLock(str(folder / "load.lock"))
                _acquire(lock, LOAD_LOCK_TIMEOUT_S, waiting, "loading models into")
                try:
                    if engine_health(state) is None:  # gone meanwhile (idle exit, crash): find or start it again
                        state = _find_or_start(settings, waiting)
                    _load_models(state, wanted, waiting)
                finally:
                    lock.release()
    finally:
        waiting.stop()
    waiting.ready(wanted if wait_for_models else None)
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
    with contextlib.suppress(ChildProcessError):  # an engine this process started: reap it, leave no zombie
        os.waitpid(pid, 0)
    return True


def stop_engine(settings: Settings) -> bool:
    """Stop the recorded engine; True if one was running."""
    folder = engine_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / "daemon.lock"), timeout=START_LOCK_TIMEOUT_S):
        state = read_state(settings)
        (folder / "state.json").unlink(missing_ok=True)
        return state is not None and _stop_pid(state.pid)
