"""The models one engine process serves: each loaded on first use, once, with its own worker; their states for
/health and whether the engine is busy, for the idle exit."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable

from mimo_core.daemon import ModelHealth
from mimo_engine.config import EngineConfig
from mimo_engine.runtime import LoadedModel
from mimo_engine.worker import ModelWorker, Unavailable

log = logging.getLogger(__name__)


class UnknownModel(LookupError):
    """No model of that name is served here."""

    def __init__(self, name: str, served: Iterable[str]) -> None:
        super().__init__(f"The model `{name}` does not exist or is not served here; "
                         f"served: {', '.join(sorted(served)) or 'none'}")
        self.name = name


# load(name, report): the model, pulling it first if needed; report(state, done, total) says how far it is
# ("pulling", bytes done, bytes total; then "loading", 0, 0)
Loader = Callable[[str, Callable[[str, int, int], None]], LoadedModel]


class Engine:
    """The models this process serves: each loaded on first use (once, behind a lock) with its own worker.

    It knows each model's state (not loaded, pulling with its bytes, loading, ready, failed: `model_health`) and
    whether it is busy (a model loading, a request in flight, a worker with work), which the idle timeout reads:
    the idle clock starts when the last request ends and nothing loads."""

    def __init__(
        self,
        available: Iterable[str],
        load: Loader,
        config: EngineConfig = EngineConfig(),
    ) -> None:
        self.available = set(available)
        self._load = load
        self.config = config
        self._workers: dict[str, ModelWorker] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._touched = time.monotonic()
        self._health = {name: ModelHealth() for name in self.available}
        self._since = {name: time.monotonic() for name in self.available}  # when each model's state began
        self._loading: set[str] = set()
        self._in_flight = 0  # requests (not health checks) being answered

    def loaded(self) -> list[str]:
        """Names of the models loaded so far."""
        return sorted(self._workers)

    def workers(self) -> dict[str, ModelWorker]:
        """The loaded models' workers by name."""
        return dict(self._workers)

    def worker(self, name: str) -> ModelWorker:
        """The worker of model `name`, loading (and pulling) it first if needed; blocks while it loads.
        UnknownModel if `name` is not served here, Unavailable if it fails to load (the log says why)."""
        if name in self._workers:
            return self._workers[name]
        if name not in self.available:
            raise UnknownModel(name, self.available)
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:  # one load per model; other models stay servable meanwhile
            if name not in self._workers:
                self._load_now(name)
        return self._workers[name]

    def _load_now(self, name: str) -> None:
        """Load model `name` and start its worker, keeping its state (and the engine's busy flag) up to date."""
        log.info("loading %s", name)
        started = time.monotonic()
        with self._guard:
            self._loading.add(name)
        self._set(name, "loading")
        draft_name = self.config.speculation.draft_model

        def report(state: str, done: int = 0, total: int = 0) -> None:  # a draft model's pull counts as this one's
            self._set(name, state, done, total)

        try:
            try:
                model = self._load(name, report)
                draft = self._load(draft_name, report) if draft_name and draft_name != name else None
            except Exception as exc:  # pip's output, a bad file, no memory: for the log, not for the client
                log.error("could not load %s: %s", name, exc)
                failed = Unavailable(f"the model `{name}` could not be loaded; the server's log says why")
                self._set(name, "failed", error=str(failed))
                raise failed from exc
            try:
                self._workers[name] = ModelWorker(model, self.config, draft)
            except ValueError as exc:  # a draft model with another tokenizer, a default drafter it lacks
                self._set(name, "failed", error=f"the model `{name}` cannot be served: {exc}")
                raise Unavailable(f"the model `{name}` cannot be served: {exc}") from exc
        finally:
            with self._guard:
                self._loading.discard(name)
            self.touch()  # the idle clock starts when the load ends, never during it
        seconds = time.monotonic() - started
        self._set(name, "ready", seconds=seconds)
        log.info("loaded %s in %.1f s", name, seconds)

    def _set(self, name: str, state: str, done: int = 0, total: int = 0, error: str | None = None,
             seconds: float | None = None) -> None:
        with self._guard:
            if self._health[name].state != state:
                self._since[name] = time.monotonic()
            self._health[name] = ModelHealth(state, done, total, round(seconds, 3) if seconds is not None else 0.0,
                                             error)

    def model_health(self) -> dict[str, ModelHealth]:
        """Every served model's state now; a pull or a load says how long it has been running."""
        now = time.monotonic()
        with self._guard:
            return {name: h if h.state in ("ready", "failed", "not_loaded")
                    else ModelHealth(h.state, h.bytes_done, h.bytes_total, round(now - self._since[name], 3))
                    for name, h in sorted(self._health.items())}

    def request_load(self, names: Iterable[str]) -> None:
        """Start loading (and pulling) each named model that is neither loaded nor loading, in the background; a
        model that failed before is tried again. UnknownModel for a model not served here."""
        for name in names:
            if name not in self.available:
                raise UnknownModel(name, self.available)
        for name in names:
            with self._guard:
                if name in self._workers or name in self._loading:
                    continue
                self._loading.add(name)  # busy from now on, before the thread has started
            self._set(name, "loading")
            threading.Thread(target=self._load_quietly, args=(name,), name=f"mimo-engine:load:{name}",
                             daemon=True).start()

    def _load_quietly(self, name: str) -> None:
        try:
            self.worker(name)
        except Unavailable:
            pass  # its state says failed, and the log says why

    def touch(self) -> None:
        """Note activity: any request, a health check included, and the end of a request or a load."""
        self._touched = time.monotonic()

    def begin_request(self) -> None:
        """A request that may take a while (a generation, a load) has arrived: the engine is busy until it ends."""
        with self._guard:
            self._in_flight += 1
        self.touch()

    def end_request(self) -> None:
        """A request begun with `begin_request` has been answered."""
        with self._guard:
            self._in_flight -= 1
        self.touch()

    def last_active(self) -> float:
        """Monotonic time of the latest activity: a touch, a submit or a step."""
        return max([self._touched, *(w.last_active for w in self._workers.values())])

    def busy(self) -> bool:
        """Whether the engine is at work: a request in flight, a model loading, or a model with requests waiting or
        running."""
        return bool(self._in_flight or self._loading) or any(w.busy for w in self._workers.values())

    def idle_s(self, now: float | None = None) -> float:
        """Seconds the engine has been idle at monotonic time `now` (default: now): 0 while it is busy, else since
        its last activity."""
        if self.busy():
            return 0.0
        return max(0.0, (time.monotonic() if now is None else now) - self.last_active())

    def close(self) -> None:
        """Stop every worker."""
        for worker in self._workers.values():
            worker.close()
