"""Continuous batching: a worker thread per model prefills new requests and decodes all running sequences together."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable, Iterable, Protocol

import numpy as np

from mimo_engine.sampling import (
    InvalidRequest,
    SamplingParams,
    StopMatcher,
    TokenLogprob,
    Utf8Stream,
    choice_rngs,
    log_softmax,
    sample_token,
    token_logprob,
)

log = logging.getLogger(__name__)

RATE_WINDOW_S = 10.0  # tokens/s is measured over this trailing window
IDLE_WAIT_S = 0.5  # how long an idle worker sleeps before looking at its flags again
RETRY_AFTER_S = 1  # what a refused client is told: sequences finish every few tokens, so retry soon


class KVCache(Protocol):
    """The cache interface the scheduler needs from the model runtime."""

    num_tokens: int

    def fork(self) -> "KVCache": ...


class Model(Protocol):
    """The model interface the scheduler needs (`mimo_engine.runtime.LoadedModel` provides it)."""

    name: str
    config: object  # has context_length
    tokenizer: object  # has eos_ids, token_bytes, token_text

    def new_cache(self) -> KVCache: ...

    def prefill(self, tokens: list[int], cache: KVCache, last_only: bool = False) -> np.ndarray: ...

    def decode(self, tokens: list[int], caches: list[KVCache]) -> np.ndarray: ...


class QueueFull(RuntimeError):
    """The model's queue is at capacity; the client should retry after `retry_after_s`."""

    def __init__(self, model: str, retry_after_s: int) -> None:
        super().__init__(f"the queue of model {model!r} is full; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class UnknownModel(LookupError):
    """No model of that name is served or known to the registry."""

    def __init__(self, name: str) -> None:
        super().__init__(f"The model `{name}` does not exist")
        self.name = name


# Events a request receives on its asyncio queue, in order: Delta* per choice, then one Done or Failed.
@dataclass(frozen=True)
class Delta:
    """New text of one choice (may be empty), the sampled token's logprob if asked, and why it ended if it did."""

    index: int
    text: str
    logprob: TokenLogprob | None = None
    finish_reason: str | None = None


@dataclass
class RequestStats:
    """What the engine did for one request: the per-request figures of the `mimo` response field."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    queued_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    decode_steps: int = 0
    batch_sizes: set[int] = field(default_factory=set)


@dataclass
class ChoiceResult:
    """The finished output of one choice."""

    index: int
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass(frozen=True)
class Done:
    """The request is complete: every choice, the prompt's logprobs if asked, and the engine's figures."""

    choices: list[ChoiceResult]
    prompt_scores: list[TokenLogprob | None] | None
    stats: RequestStats


@dataclass(frozen=True)
class Failed:
    """The model raised while serving the request."""

    message: str


class Request:
    """One submitted request: its prompt and sampling, and the asyncio queue its events arrive on."""

    def __init__(self, prompt: list[int], params: SamplingParams, prompt_logprobs: int | None = None) -> None:
        self.prompt = prompt
        self.params = params
        self.prompt_logprobs = prompt_logprobs  # None: not wanted; k: score each prompt token, with the top k
        self.stats = RequestStats(prompt_tokens=len(prompt))
        self.cancelled = False
        self.submitted_at = time.monotonic()
        self.choices: list[Choice] = []  # filled by the worker when the request starts
        self.prompt_scores: list[TokenLogprob | None] | None = None  # likewise, when prompt_logprobs is set
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue = asyncio.Queue()

    def emit(self, event: Delta | Done | Failed) -> None:
        """Hand an event to the request's event loop; safe to call from the worker thread."""
        self._loop.call_soon_threadsafe(self._events.put_nowait, event)

    def cancel(self) -> None:
        """Stop generating for this request (the client went away); the worker retires its sequences."""
        self.cancelled = True

    async def events(self) -> AsyncIterator[Delta | Done | Failed]:
        """The request's events, up to and including Done or Failed."""
        while True:
            event = await self._events.get()
            yield event
            if not isinstance(event, Delta):
                return

    async def result(self, is_disconnected: Callable[[], Awaitable[bool]] | None = None) -> Done | Failed:
        """Wait for the end; if `is_disconnected` reports the client gone, cancel and return a Failed."""
        try:
            async for event in self.events():
                if not isinstance(event, Delta):
                    return event
                if is_disconnected is not None and await is_disconnected():
                    break
            return Failed("the client disconnected")
        finally:
            self.cancel()  # a no-op once Done has arrived


@dataclass
class Choice:
    """One sequence being generated: a choice of a request, with its own cache, generator and text state."""

    request: Request
    result: ChoiceResult
    cache: KVCache
    rng: np.random.Generator
    text: Utf8Stream
    stop: StopMatcher
    max_tokens: int
    last_token: int = -1


@dataclass
class WorkerMetrics:
    """Counters and gauges of one model's worker, read by /metrics."""

    requests: int = 0
    rejected: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    decode_steps: int = 0
    waiting: int = 0
    running: int = 0
    max_batch_size_seen: int = 0
    recent: deque = field(default_factory=deque)  # (monotonic time, tokens generated)

    def record_tokens(self, tokens: int) -> None:
        """Count generated tokens for the trailing tokens/s window."""
        now = time.monotonic()
        self.completion_tokens += tokens
        self.recent.append((now, tokens))
        while self.recent and self.recent[0][0] < now - RATE_WINDOW_S:
            self.recent.popleft()

    def tokens_per_s(self) -> float:
        """Generated tokens per second over the trailing window."""
        recent = list(self.recent)
        if not recent:
            return 0.0
        span = max(time.monotonic() - recent[0][0], 1e-3)
        return sum(tokens for _, tokens in recent) / min(span, RATE_WINDOW_S)


class ModelWorker:
    """Serves one model: a bounded waiting queue and a thread that runs the continuous-batching loop."""

    def __init__(self, model: Model, max_batch_size: int = 8, max_queue: int = 32) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.capacity = max_batch_size + max_queue  # sequences running plus waiting
        self.metrics = WorkerMetrics()
        self.last_active = time.monotonic()
        self._waiting: deque[Request] = deque()
        self._running: list[Choice] = []
        self._wakeup = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"mimo-engine:{model.name}", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """Whether any request is waiting or running."""
        return bool(self._waiting or self._running)

    def submit(self, request: Request) -> None:
        """Queue a request; raises InvalidRequest if it can never run, QueueFull if the queue is at capacity."""
        self._validate(request)
        with self._wakeup:
            queued = sum(r.params.n for r in self._waiting) + len(self._running)
            if queued + request.params.n > self.capacity:
                self.metrics.rejected += 1
                raise QueueFull(self.model.name, RETRY_AFTER_S)
            self._waiting.append(request)
            self.metrics.requests += 1
            self.metrics.waiting = len(self._waiting)
            self.last_active = time.monotonic()
            self._wakeup.notify()

    def close(self) -> None:
        """Stop the worker thread; requests still queued or running get a Failed event."""
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()
        self._thread.join()

    def _validate(self, request: Request) -> None:
        context = self.model.config.context_length
        if not request.prompt:
            raise InvalidRequest("the prompt is empty", "prompt")
        if len(request.prompt) >= context:
            raise InvalidRequest(f"the prompt has {len(request.prompt)} tokens; this model's context is {context}")
        if request.params.n > self.max_batch_size:
            raise InvalidRequest(f"n may be at most the server's max batch size, {self.max_batch_size}", "n")

    def _loop(self) -> None:
        while True:
            with self._wakeup:
                while not (self._closed or self._waiting or self._running):
                    self._wakeup.wait(IDLE_WAIT_S)
                if self._closed:
                    break
            try:
                self._admit()
                self._retire_cancelled()
                if self._running:
                    self._decode_step()
            except Exception as exc:  # a model error must not kill the worker: fail what it was serving
                log.exception("model %s failed", self.model.name)
                self._fail_running(f"{type(exc).__name__}: {exc}")
        self._fail_running("the server is shutting down")
        for request in self._waiting:
            request.emit(Failed("the server is shutting down"))

    def _admit(self) -> None:
        """Prefill waiting requests, oldest first, while their choices fit in the batch."""
        while True:
            with self._wakeup:
                if not self._waiting or len(self._running) + self._waiting[0].params.n > self.max_batch_size:
                    return
                request = self._waiting[0]
            if not request.cancelled:
                self._start(request)
            with self._wakeup:  # popped only now, so that submit counts it against capacity while it prefills
                self._waiting.popleft()
                self.metrics.waiting = len(self._waiting)

    def _start(self, request: Request) -> None:
        """Prefill the prompt once, then fork its cache into one sequence per choice and sample each first token."""
        request.stats.queued_s = time.monotonic() - request.submitted_at
        cache = self.model.new_cache()
        started = time.perf_counter()
        try:
            # [P, V] when the prompt is scored, else [1, V]: the lm_head of one row, not of the whole prompt
            logits = self.model.prefill(request.prompt, cache, last_only=request.prompt_logprobs is None)
        except Exception as exc:  # this request's failure only; the running ones go on
            log.exception("prefill failed on model %s", self.model.name)
            request.emit(Failed(f"{type(exc).__name__}: {exc}"))
            return
        request.stats.prefill_s = time.perf_counter() - started
        self.metrics.prompt_tokens += len(request.prompt)
        request.prompt_scores = self._prompt_logprobs(request, logits)
        request.choices = self._choices(request, cache)
        for choice in request.choices:
            if choice.max_tokens == 0:
                self._finish(choice, "length", "")
            else:
                self._running.append(choice)
                self._advance(choice, logits[-1])
        self._update_running()

    def _choices(self, request: Request, cache: KVCache) -> list[Choice]:
        """One sequence per choice, each with its own fork of the prefilled cache and its own generator."""
        params = request.params
        room = self.model.config.context_length - len(request.prompt)
        max_tokens = room if params.max_tokens is None else min(room, params.max_tokens)
        caches = [cache] + [cache.fork() for _ in range(params.n - 1)]
        rngs = choice_rngs(params.seed, params.n)
        return [
            Choice(
                request, ChoiceResult(i), caches[i], rngs[i],
                Utf8Stream(self.model.tokenizer), StopMatcher(params.stop), max_tokens,
            )  # fmt: skip
            for i in range(params.n)
        ]

    @staticmethod
    def _prompt_logprobs(request: Request, logits: np.ndarray) -> list[TokenLogprob | None] | None:
        """Each prompt token's logprob given the tokens before it; the first token has none."""
        if request.prompt_logprobs is None:
            return None
        logprobs = log_softmax(logits[:-1])  # [P-1, V]: row i predicts prompt token i+1
        top_n = request.prompt_logprobs
        return [None, *(token_logprob(row, token, top_n) for row, token in zip(logprobs, request.prompt[1:]))]

    def _decode_step(self) -> None:
        """One batched decode over every running sequence, then sample and advance each of them."""
        batch = list(self._running)
        started = time.perf_counter()
        logits = self.model.decode([c.last_token for c in batch], [c.cache for c in batch])  # [B, V]
        elapsed = time.perf_counter() - started
        for request in self._requests_of(batch):
            request.stats.decode_s += elapsed
            request.stats.decode_steps += 1
            request.stats.batch_sizes.add(len(batch))
        self.metrics.decode_steps += 1
        self.metrics.max_batch_size_seen = max(self.metrics.max_batch_size_seen, len(batch))
        for choice, row in zip(batch, logits):
            self._advance(choice, row)
        self._update_running()

    def _advance(self, choice: Choice, logits: np.ndarray) -> None:
        """Sample the next token of a sequence, emit its text, and finish the sequence if it is done."""
        params = choice.request.params
        token = sample_token(logits, params, choice.rng)
        self.metrics.record_tokens(1)
        choice.request.stats.completion_tokens += 1
        if token in self.model.tokenizer.eos_ids:
            self._finish(choice, "stop", self._tail(choice))
            return
        logprob = token_logprob(log_softmax(logits), token, params.top_logprobs) if params.logprobs else None
        choice.result.tokens.append(token)
        if logprob is not None:
            choice.result.logprobs.append(logprob)
        choice.last_token = token
        text, stopped = choice.stop.push(choice.text.push(token))
        if stopped:
            self._finish(choice, "stop", text, logprob)
        elif len(choice.result.tokens) >= choice.max_tokens:
            self._finish(choice, "length", text + self._tail(choice), logprob)
        else:
            choice.result.text += text
            choice.request.emit(Delta(choice.result.index, text, logprob))

    @staticmethod
    def _tail(choice: Choice) -> str:
        """The text still held back when a sequence ends without a stop string: partial stop text, stray bytes."""
        return choice.stop.flush() + choice.text.flush()

    def _finish(self, choice: Choice, reason: str, text: str, logprob: TokenLogprob | None = None) -> None:
        """Retire a sequence; when it was its request's last, send Done."""
        choice.result.text += text
        choice.result.finish_reason = reason
        choice.request.emit(Delta(choice.result.index, text, logprob, reason))
        if choice in self._running:
            self._running.remove(choice)
        request = choice.request
        if all(c.result.finish_reason for c in request.choices):
            request.emit(Done([c.result for c in request.choices], request.prompt_scores, request.stats))

    def _retire_cancelled(self) -> None:
        """Drop the sequences of requests whose client went away."""
        if any(c.request.cancelled for c in self._running):
            self._running = [c for c in self._running if not c.request.cancelled]
            self._update_running()

    @staticmethod
    def _requests_of(choices: list[Choice]) -> list[Request]:
        """The distinct requests that `choices` belong to."""
        return list({id(c.request): c.request for c in choices}.values())

    def _fail_running(self, message: str) -> None:
        for request in self._requests_of(self._running):
            request.emit(Failed(message))
        self._running = []
        self._update_running()

    def _update_running(self) -> None:
        self.metrics.running = len(self._running)
        self.last_active = time.monotonic()


class Engine:
    """The models this process serves: each loaded on first use (once, behind a lock) with its own worker."""

    def __init__(
        self,
        available: Iterable[str],
        load: Callable[[str], Model],
        max_batch_size: int = 8,
        max_queue: int = 32,
    ) -> None:
        self.available = set(available)
        self._load = load
        self._max_batch_size = max_batch_size
        self._max_queue = max_queue
        self._workers: dict[str, ModelWorker] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._touched = time.monotonic()

    def loaded(self) -> list[str]:
        """Names of the models loaded so far."""
        return sorted(self._workers)

    def workers(self) -> dict[str, ModelWorker]:
        """The loaded models' workers by name."""
        return dict(self._workers)

    def worker(self, name: str) -> ModelWorker:
        """The worker of model `name`, loading (and pulling) it first if needed; blocks while it loads."""
        if name in self._workers:
            return self._workers[name]
        if name not in self.available:
            raise UnknownModel(name)
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:  # one load per model; other models stay servable meanwhile
            if name not in self._workers:
                self._workers[name] = ModelWorker(self._load(name), self._max_batch_size, self._max_queue)
        return self._workers[name]

    def touch(self) -> None:
        """Note activity that is not a generation (a health check, a model listing)."""
        self._touched = time.monotonic()

    def last_active(self) -> float:
        """Monotonic time of the latest activity: a touch, a submit or a decode step."""
        return max([self._touched, *(w.last_active for w in self._workers.values())])

    def busy(self) -> bool:
        """Whether any model has requests waiting or running."""
        return any(w.busy for w in self._workers.values())

    def close(self) -> None:
        """Stop every worker."""
        for worker in self._workers.values():
            worker.close()
