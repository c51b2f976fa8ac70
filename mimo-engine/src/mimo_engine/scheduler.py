"""Continuous batching with chunked prefill: a worker thread per model builds one `StepBatch` per iteration.

Each iteration, in order: every decoding sequence gets its next token; prompts being prefilled get chunks from what
is left of the per-step token budget; waiting requests are admitted while the batch has room, each starting from
its longest cached prefix. So a long prompt no longer stalls running streams: it shares steps with them, a chunk at
a time. A request's `n` choices share its prompt's blocks (one prefill, then copy-on-write forks), and a sequence's
blocks are released the moment it finishes, fails or is cancelled.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Iterable

import numpy as np
from precision_router.policy import Policy, entropy_nats
from tiered_kv_cache import KVPool, NoFreeBlocks, TierSizes

from mimo_core.daemon import ModelHealth
from mimo_core.extensions import MimoReport, MimoRequest, SpeculationRequest
from mimo_engine.metrics import WorkerGauges, WorkerMetrics
from mimo_engine.runtime import BLOCK_SIZE, EngineCore, LoadedModel, PolicyNotServed, Work
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
from mimo_engine.speculation import (
    DEFAULT_BLOCK,
    Draft,
    DraftAsk,
    Drafter,
    ModelDrafter,
    NgramDrafter,
    SequenceSpeculation,
    Speculator,
    SuffixCorpus,
    SuffixDrafter,
    verify,
)
from mimo_engine.step import WeightPlan

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.5  # how long an idle worker sleeps before looking at its flags again
RETRY_AFTER_S = 1  # what a refused client is told: sequences finish every few tokens, so retry soon
# Per-step token budget. Measured on smollm2-135m (`mimo-engine bench --interference`): 4 streams' inter-token p99
# while an 800-token prompt arrives is 2318 ms with the whole prompt in one step, 659 / 364 / 191 ms at 256 / 128 / 64,
# and that prompt's time to first token 2.34 / 1.97 / 2.17 / 2.29 s.
STEP_TOKENS = 128
KV_CACHE_BYTES = 1 << 30  # default KV pool size; the OS backs it lazily, as blocks are first written


@dataclass(frozen=True)
class SpeculationOptions:
    """The speculation of requests that name none (method "none": plain decoding), and the draft model that the
    `draft-model` method drafts with (registry name; None: that method is not served)."""

    method: str = "none"
    block: int = DEFAULT_BLOCK
    draft_model: str | None = None


class QueueFull(RuntimeError):
    """The model's queue is at capacity; the client should retry after `retry_after_s`."""

    def __init__(self, model: str, retry_after_s: int) -> None:
        super().__init__(f"the queue of model {model!r} is full; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class UnknownModel(LookupError):
    """No model of that name is served here."""

    def __init__(self, name: str, served: Iterable[str]) -> None:
        super().__init__(f"The model `{name}` does not exist or is not served here; "
                         f"served: {', '.join(sorted(served)) or 'none'}")
        self.name = name


class Unavailable(RuntimeError):
    """The request cannot be served now: its model failed to load, or the server is shutting down."""


# Events a request receives on its asyncio queue, in order: Delta* per choice, then one Done or Failed.
@dataclass(frozen=True)
class Delta:
    """New text of one choice (may be empty), the sampled token's logprob if asked, and why it ended if it did."""

    index: int
    text: str
    logprob: TokenLogprob | None = None
    finish_reason: str | None = None


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
    """The request is complete: every choice, the prompt's logprobs if asked, and the engine's report."""

    choices: list[ChoiceResult]
    prompt_scores: list[TokenLogprob | None] | None
    report: MimoReport


@dataclass(frozen=True)
class Failed:
    """The model raised while serving the request, or the request was cut short."""

    message: str


class Request:
    """One submitted request: its prompt, sampling and `mimo` extension, and the asyncio queue its events arrive on."""

    def __init__(self, prompt: list[int], params: SamplingParams, prompt_logprobs: int | None = None,
                 mimo: MimoRequest | None = None) -> None:
        self.prompt = prompt
        self.params = params
        self.prompt_logprobs = prompt_logprobs  # None: not wanted; k: score each prompt token, with the top k
        self.mimo = mimo or MimoRequest()
        self.policy: Policy | None = None  # the precision policy, resolved by the worker it is submitted to
        self.report = MimoReport(model="")
        self.report.cache.enabled = self.mimo.cache_enabled
        self.cancelled = False
        self.submitted_at = time.monotonic()
        self.choices: list[Choice] = []  # filled by the worker when the prompt has been prefilled
        self.prompt_rows: list[np.ndarray] = []  # logits of prompt positions, gathered chunk by chunk when scored
        self.prompt_scores: list[TokenLogprob | None] | None = None
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue = asyncio.Queue()

    @property
    def reuse(self) -> bool:
        """Whether the prompt may start from cached blocks: asked for, and no logits wanted at cached positions."""
        return self.mimo.cache_enabled and self.prompt_logprobs is None

    def emit(self, event: Delta | Done | Failed) -> None:
        """Hand an event to the request's event loop; safe to call from the worker thread. A loop that has closed
        (its caller went away without cancelling) cancels the request: the worker retires it at its next step."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody will read this request's events
            self.cancelled = True

    def cancel(self) -> None:
        """Stop generating for this request (the client went away); the worker frees its sequences."""
        self.cancelled = True

    async def events(self) -> AsyncIterator[Delta | Done | Failed]:
        """The request's events, up to and including Done or Failed."""
        while True:
            event = await self._events.get()
            yield event
            if not isinstance(event, Delta):
                return

    async def result(self) -> Done | Failed:
        """Wait for the end; if the waiting task is cancelled (its client went away), the request is cancelled."""
        try:
            async for event in self.events():
                pass
            return event  # the last one: Done or Failed
        finally:
            self.cancel()  # a no-op once Done has arrived


@dataclass
class Choice:
    """One sequence being generated: a choice of a request, with its own generator and text state."""

    seq_id: Hashable
    request: Request
    result: ChoiceResult
    rng: np.random.Generator
    text: Utf8Stream
    stop: StopMatcher
    max_tokens: int
    last_token_at: float = 0.0
    plan: WeightPlan | None = None  # the weight formats its next token reads (the precision policy's choice)
    speculation: SequenceSpeculation | None = None  # None: it decodes a token per step
    draft: Draft | None = None  # the block this step verifies


@dataclass
class Prefill:
    """A request whose prompt is being computed, a chunk per step, in the sequence `seq_id`."""

    seq_id: Hashable
    request: Request


def block_bytes(model: LoadedModel) -> int:
    """Bytes of one KV block of the model, keys and values of every layer."""
    c = model.config
    return KVPool.block_bytes(c.n_layer, c.n_kv_head, c.head_dim, BLOCK_SIZE)


def kv_blocks(model: LoadedModel, max_batch_size: int, kv_cache_bytes: int) -> int:
    """Blocks in the pool: enough for every running sequence at full context, within the byte budget, and never
    fewer than one full context."""
    one_context = math.ceil(model.config.context_length / BLOCK_SIZE) + 1  # a request alone always fits
    return max(one_context, min(max_batch_size * one_context, kv_cache_bytes // block_bytes(model)))


class ModelWorker:
    """Serves one model: a bounded waiting queue and a thread that runs the continuous-batching loop."""

    def __init__(self, model: LoadedModel, max_batch_size: int = 8, max_queue: int = 32,
                 step_tokens: int = STEP_TOKENS, kv_cache_bytes: int = KV_CACHE_BYTES,
                 kv_tiers: TierSizes = TierSizes(), speculation: SpeculationOptions = SpeculationOptions(),
                 draft: LoadedModel | None = None) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.capacity = max_batch_size + max_queue  # sequences running plus waiting
        self.step_tokens = step_tokens
        self.core = EngineCore(model, kv_blocks(model, max_batch_size, kv_cache_bytes),
                               kv_tiers.in_blocks(block_bytes(model)))
        self.speculation = speculation
        self.speculator = self._speculator(draft, kv_cache_bytes)
        if speculation.method not in self.speculator.drafters and speculation.method != "none":
            raise ValueError(self._unserved(speculation.method))
        self.metrics = WorkerMetrics()
        self.last_active = time.monotonic()
        self._ids = itertools.count()
        self._waiting: deque[Request] = deque()
        self._prefilling: list[Prefill] = []
        self._running: list[Choice] = []
        self._wakeup = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"mimo-engine:{model.name}", daemon=True)
        self._thread.start()

    def _speculator(self, draft: LoadedModel | None, kv_cache_bytes: int) -> Speculator:
        """The drafters this model can serve: lookups always; self-mxfp4 where its MXFP4 weights are held; the draft
        model, which must share the target's tokenizer, with its own core."""
        corpus = SuffixCorpus()
        drafters: dict[str, Drafter] = {"ngram": NgramDrafter(), "suffix": SuffixDrafter(corpus)}
        try:
            drafters["self-mxfp4"] = ModelDrafter(self.core, self.model.plan(self.model.policy("mxfp4")), shared=True)
        except PolicyNotServed:
            pass
        if draft is not None:
            if not draft.tokenizer.same_vocabulary(self.model.tokenizer) \
                    or draft.config.vocab_size != self.model.config.vocab_size:
                raise ValueError(f"the draft model {draft.name} does not share {self.model.name}'s tokenizer")
            if draft.config.context_length < self.model.config.context_length:
                raise ValueError(f"the draft model {draft.name} has a shorter context than {self.model.name}")
            blocks = kv_blocks(draft, self.max_batch_size, kv_cache_bytes)
            drafters["draft-model"] = ModelDrafter(EngineCore(draft, blocks))
        return Speculator(drafters, corpus)

    def _unserved(self, method: str) -> str:
        return {"draft-model": f"speculation method 'draft-model' needs a draft model: start the server with "
                               f"--draft-model NAME (a smaller model with {self.model.name}'s tokenizer)",
                "self-mxfp4": f"speculation method 'self-mxfp4' needs {self.model.name}'s MXFP4 weights: include "
                              f"mxfp4 in MIMO_PRECISION_POLICIES"}[method]

    @property
    def busy(self) -> bool:
        """Whether any request is waiting, prefilling or running."""
        return bool(self._waiting or self._prefilling or self._running)

    def submit(self, request: Request) -> None:
        """Queue a request; raises InvalidRequest if it can never run, QueueFull if the queue is at capacity,
        Unavailable once the worker is closed."""
        self._validate(request)
        request.report.model = self.model.name
        request.report.precision.policy = request.policy.name
        request.report.precision.thresholds = {  # infinities are not JSON: say what they mean
            group: "always" if t == math.inf else "never" if t == -math.inf else round(t, 6)
            for group, t in request.policy.thresholds.items()}
        with self._wakeup:
            if self._closed:
                raise Unavailable("the server is shutting down")
            queued = sum(r.params.n for r in self._waiting) + self._sequences()
            if queued + request.params.n > self.capacity:
                self.metrics.rejected += 1
                raise QueueFull(self.model.name, RETRY_AFTER_S)
            self._waiting.append(request)
            self.metrics.requests += 1
            self.metrics.admitted(request.report)  # counted from now on as its work is done
            self.last_active = time.monotonic()
            self._wakeup.notify()

    def close(self) -> None:
        """Stop the worker thread; requests still queued or running get a Failed event."""
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()
        self._thread.join()

    def gauges(self) -> WorkerGauges:
        """The worker's state now, for /metrics."""
        blocks = self.core.blocks
        looked_up = blocks.stats.lookup_tokens
        return WorkerGauges(
            waiting=len(self._waiting),
            running=len(self._running),
            prefilling=len(self._prefilling),
            kv_blocks_used=blocks.num_used_blocks,
            kv_blocks_free=blocks.num_free_blocks,
            kv_blocks_cached=blocks.num_cached_blocks,
            prefix_hit_rate=blocks.stats.total_hit_tokens / looked_up if looked_up else 0.0,
            tokens_per_s=self.metrics.tokens_per_s(),
        )

    # ---------------------------------------------------------------- the loop

    def _validate(self, request: Request) -> None:
        context = self.model.config.context_length
        if not request.prompt:
            raise InvalidRequest("the prompt is empty", "prompt")
        if len(request.prompt) >= context:
            raise InvalidRequest(f"the prompt has {len(request.prompt)} tokens; this model's context is {context}")
        if request.params.n > self.max_batch_size:
            raise InvalidRequest(f"n may be at most the server's max batch size, {self.max_batch_size}", "n")
        try:
            request.policy = self.model.policy(request.mimo.precision and request.mimo.precision.policy)
        except ValueError as exc:  # an unknown policy, or one whose formats this model does not hold
            raise InvalidRequest(str(exc), "mimo.precision.policy") from None
        asked = self._speculation(request)
        if asked.method != "none" and asked.method not in self.speculator.drafters:
            raise InvalidRequest(self._unserved(asked.method), "mimo.speculation.method")
        report = request.report.speculation
        report.method, report.block, report.adaptive = asked.method, asked.block, asked.adaptive

    def _speculation(self, request: Request) -> SpeculationRequest:
        """The speculation of a request: its own `mimo.speculation`, else the worker's default."""
        return request.mimo.speculation or SpeculationRequest(self.speculation.method, self.speculation.block)

    def _sequences(self) -> int:
        """Sequences admitted: decoding choices, and the choices that prompts being prefilled will become."""
        return len(self._running) + sum(p.request.params.n for p in self._prefilling)

    def _loop(self) -> None:
        self.model.use_threads()  # numba's thread count is this thread's own
        while True:
            with self._wakeup:
                while not (self._closed or self.busy):
                    self._wakeup.wait(IDLE_WAIT_S)
                if self._closed:
                    break
            try:
                self._retire_cancelled()
                self._step()
            except Exception as exc:  # a model error must not kill the worker: fail what it was serving
                log.exception("model %s failed", self.model.name)
                self._fail_admitted(f"{type(exc).__name__}: {exc}")
        self._fail_admitted("the server is shutting down")
        for request in self._waiting:
            self.metrics.ended(request.report)
            request.emit(Failed("the server is shutting down"))
        try:
            self.core.close()  # cached blocks go down to the disk tier, for the next process
        except Exception:  # a failing disk must not stop the shutdown
            log.exception("model %s: could not move its KV blocks to disk", self.model.name)

    def _schedule(self) -> list[Work]:
        """This step's work: a token for every decoding sequence (and the block drafted for it, to verify), then
        prompt chunks within what is left of the token budget."""
        self._draft()
        work = []
        for c in self._running:
            drafted = len(c.draft.tokens) if c.draft else 0
            work.append(Work(c.seq_id, 1 + drafted, "all" if drafted else "last", c.plan))
        budget = self.step_tokens - sum(w.num_tokens for w in work)
        for prefill in self._prefilling:
            if budget <= 0:
                break
            work.append(self._chunk(prefill, budget))
            budget -= work[-1].num_tokens
        while budget > 0 and self._admit():
            work.append(self._chunk(self._prefilling[-1], budget))
            budget -= work[-1].num_tokens
        return work

    def _draft(self) -> None:
        """Draft blocks for the speculating sequences, as many tokens as pay off (`Speculator.lengths`), and append
        them to their sequences for this step to verify."""
        asks = []
        for c in self._running:
            if c.speculation:
                tokens = self.core.sequences[c.seq_id].token_ids
                room = min(c.max_tokens - len(c.result.tokens), self.model.config.context_length - len(tokens)) - 1
                asks.append((c.speculation, DraftAsk(c.seq_id, tokens, min(c.speculation.block, room),
                                                     c.request.params, c.rng)))
        if not asks:
            return
        drafts, seconds = self.speculator.draft(asks, len(self._running))
        for c in self._running:
            if not c.speculation:
                continue
            c.draft = drafts.get(c.seq_id)
            report = c.request.report.speculation
            if c.draft:
                self.core.append(c.seq_id, c.draft.tokens)
                report.draft_s = round(report.draft_s + seconds.get(c.speculation.method, 0.0), 6)
            else:
                report.plain_steps += 1

    def _chunk(self, prefill: Prefill, budget: int) -> Work:
        pending = self.core.pending(prefill.seq_id)
        n = min(pending, budget)
        scored = prefill.request.prompt_logprobs is not None
        return Work(prefill.seq_id, n, "all" if scored else "last" if n == pending else "none",
                    self.model.plan(prefill.request.policy))

    def _admit(self) -> bool:
        """Start the oldest waiting request if the batch has room for its choices and the pool for its prompt."""
        with self._wakeup:
            if not self._waiting or self._sequences() + self._waiting[0].params.n > self.max_batch_size:
                return False
            request = self._waiting[0]
            if self.core.blocks.num_free_blocks < math.ceil(len(request.prompt) / BLOCK_SIZE):
                return False  # it waits until running sequences finish and free their blocks
            seq_id = next(self._ids)
            try:
                # cached blocks are found among those computed under the same weight plan as this prompt's
                cached = self.core.add(seq_id, request.prompt, reuse=request.reuse,
                                       plan=self.model.plan(request.policy))
            except NoFreeBlocks:
                return False
            self._waiting.popleft()
        request.report.queued_s = round(time.monotonic() - request.submitted_at, 6)
        cache = request.report.cache
        cache.hbm_hit_tokens, cache.dram_hit_tokens = cached["hbm"], cached["dram"]
        cache.disk_hit_tokens = cached["disk"]
        cache.cached_tokens = sum(cached.values())
        self._prefilling.append(Prefill(seq_id, request))
        return True

    def _step(self) -> None:
        """Run one step and advance every sequence in it."""
        work = self._schedule()
        if not work:
            return
        started = time.perf_counter()
        try:
            results = self.core.step(work)
        except NoFreeBlocks:  # the pool ran out mid-generation: the newest request gives way, with a clear reason
            for c in self._running:  # drafted blocks wait for no one: drop them
                if c.draft:
                    self.core.truncate(c.seq_id, len(self.core.sequences[c.seq_id].token_ids) - len(c.draft.tokens))
                    c.draft = None
            self._fail(self._newest(), "the KV cache is full: the request was stopped to let the others finish")
            return
        elapsed = time.perf_counter() - started
        prefilling = {p.seq_id: p for p in self._prefilling}
        if not any(w.seq_id in prefilling for w in work):  # what drafting is weighed against: decode steps
            self.speculator.step_cost.observe(sum(w.num_tokens for w in work), elapsed)
        running = {c.seq_id: c for c in self._running}
        touched: dict[int, Request] = {}
        for w, logits in zip(work, results):
            request = (prefilling[w.seq_id].request if w.seq_id in prefilling else running[w.seq_id].request)
            if id(request) not in touched:
                touched[id(request)] = request
                report = request.report
                report.steps += 1
                report.batch_sizes = sorted({*report.batch_sizes, len(work)})
                if w.seq_id in prefilling:
                    report.prefill_s = round(report.prefill_s + elapsed, 6)
                else:
                    report.decode_s = round(report.decode_s + elapsed, 6)
            self._count_reads(request, w)
            if w.seq_id in prefilling:
                request.report.cache.prefilled_tokens += w.num_tokens  # counted as computed, not when admitted
                self._prefilled(prefilling[w.seq_id], logits)
            else:
                self._advance(running[w.seq_id], logits)
        self.metrics.steps += 1
        self.metrics.step_tokens.observe(sum(w.num_tokens for w in work))
        self.last_active = time.monotonic()

    def _count_reads(self, request: Request, work: Work) -> None:
        """Add the weight formats and bytes that `work`'s tokens read to its request's precision report."""
        formats, weight_bytes, weights = self.model.plan_reads(work.plan)
        request.report.precision.count(formats, weight_bytes, weights, work.num_tokens)

    def _prefilled(self, prefill: Prefill, logits: np.ndarray) -> None:
        """A prompt chunk ran: keep scored rows; once the whole prompt is in, fork its choices and sample each."""
        request = prefill.request
        if request.prompt_logprobs is not None:
            request.prompt_rows.append(logits)
        if self.core.pending(prefill.seq_id):
            return
        self._prefilling.remove(prefill)
        request.report.prompt_tokens = len(request.prompt)  # counted once its prompt is in, as vLLM counts it
        if request.prompt_logprobs is not None:
            rows = np.concatenate(request.prompt_rows)  # [P, V]
            request.prompt_rows = []
            request.prompt_scores = self._prompt_logprobs(request, rows)
        request.choices = self._choices(request, prefill.seq_id)
        for choice in request.choices:
            if choice.max_tokens == 0:
                self._finish(choice, "length", "")
            else:
                self._running.append(choice)
                self._advance(choice, logits[-1:])

    def _choices(self, request: Request, seq_id: Hashable) -> list[Choice]:
        """One sequence per choice: the first continues the prompt's sequence, the others fork its blocks."""
        params = request.params
        room = self.model.config.context_length - len(request.prompt)
        max_tokens = room if params.max_tokens is None else min(room, params.max_tokens)
        seq_ids = [seq_id]
        for _ in range(params.n - 1):
            seq_ids.append(next(self._ids))
            self.core.fork(seq_id, seq_ids[-1])
        rngs = choice_rngs(params.seed, params.n)
        asked = self._speculation(request)
        return [
            Choice(seq_ids[i], request, ChoiceResult(i), rngs[i], Utf8Stream(self.model.tokenizer),
                   StopMatcher(params.stop), max_tokens,
                   speculation=SequenceSpeculation(asked.method, asked.block, asked.adaptive)
                   if asked.method != "none" else None)
            for i in range(params.n)
        ]

    @staticmethod
    def _prompt_logprobs(request: Request, logits: np.ndarray) -> list[TokenLogprob | None]:
        """Each prompt token's logprob given the tokens before it; the first token has none."""
        logprobs = log_softmax(logits[:-1])  # [P-1, V]: row i predicts prompt token i+1
        top_n = request.prompt_logprobs or 0
        return [None, *(token_logprob(row, token, top_n) for row, token in zip(logprobs, request.prompt[1:]))]

    def _advance(self, choice: Choice, logits: np.ndarray) -> None:
        """Take the sequence's next tokens from this step's logits [1 + drafted, V]: one sampled token, or the tokens
        kept of its drafted block (whose rejected tail is rolled back); emit them, finishing the sequence if done."""
        params, draft = choice.request.params, choice.draft
        if draft is None:
            tokens = [sample_token(logits[-1], params, choice.rng)]
        else:
            choice.draft = None
            tokens, accepted = verify(draft, logits, params, choice.rng)
            choice.speculation.observe(len(draft.tokens), accepted)
            choice.request.report.speculation.count(len(draft.tokens), accepted)
            kept = len(self.core.sequences[choice.seq_id].token_ids) - len(draft.tokens) + accepted
            self.core.truncate(choice.seq_id, kept)  # accepted tokens stay computed; the rest is rolled back
        for token, row in zip(tokens, logits):
            if not self._emit(choice, token, row):
                return
        self.core.append(choice.seq_id, tokens[-1:])  # the last token is computed next step

    def _emit(self, choice: Choice, token: int, logits: np.ndarray) -> bool:
        """Emit one token sampled from `logits` [V]; False if it finished the sequence."""
        request, params = choice.request, choice.request.params
        now = time.monotonic()
        if choice.last_token_at:
            self.metrics.inter_token_latency_s.observe(now - choice.last_token_at)
        elif choice.result.index == 0:
            request.report.time_to_first_token_s = round(now - request.submitted_at, 6)
        choice.last_token_at = now
        self.metrics.record_tokens(1)
        request.report.completion_tokens += 1
        if token in self.model.tokenizer.eos_ids:
            self._finish(choice, "stop", self._tail(choice))
            return False
        logprob = token_logprob(log_softmax(logits), token, params.top_logprobs) if params.logprobs else None
        choice.result.tokens.append(token)
        if logprob is not None:
            choice.result.logprobs.append(logprob)
        text, stopped = choice.stop.push(choice.text.push(token))
        if stopped:
            self._finish(choice, "stop", text, logprob)
            return False
        if len(choice.result.tokens) >= choice.max_tokens:
            self._finish(choice, "length", text + self._tail(choice), logprob)
            return False
        choice.result.text += text
        choice.plan = self.model.plan(request.policy, float(entropy_nats(logits)) if request.policy.thresholds
                                      else None)  # what the next token reads, from this distribution
        request.emit(Delta(choice.result.index, text, logprob))
        return True

    @staticmethod
    def _tail(choice: Choice) -> str:
        """The text still held back when a sequence ends without a stop string: partial stop text, stray bytes."""
        return choice.stop.flush() + choice.text.flush()

    def _finish(self, choice: Choice, reason: str, text: str, logprob: TokenLogprob | None = None) -> None:
        """Retire a sequence and free its blocks; when it was its request's last, send Done."""
        choice.result.text += text
        choice.result.finish_reason = reason
        choice.request.emit(Delta(choice.result.index, text, logprob, reason))
        if choice in self._running:
            self._running.remove(choice)
        self.core.free(choice.seq_id)
        self.speculator.release(choice.seq_id, [*choice.request.prompt, *choice.result.tokens])
        request = choice.request
        if all(c.result.finish_reason for c in request.choices):
            request.report.duration_s = round(time.monotonic() - request.submitted_at, 6)
            self.metrics.ended(request.report, finished=True)
            request.emit(Done([c.result for c in request.choices], request.prompt_scores, request.report))

    def _retire_cancelled(self) -> None:
        """Drop the requests whose client went away, freeing their blocks at once."""
        for request in {id(r): r for r in self._admitted() if r.cancelled}.values():
            self._release(request)
            self.metrics.ended(request.report)  # what it computed before its client left stays counted
        with self._wakeup:
            for request in self._waiting:
                if request.cancelled:
                    self.metrics.ended(request.report)
            self._waiting = deque(r for r in self._waiting if not r.cancelled)

    def _admitted(self) -> list[Request]:
        """Requests being prefilled or decoded, oldest first."""
        requests = [p.request for p in self._prefilling] + [c.request for c in self._running]
        return list({id(r): r for r in requests}.values())

    def _newest(self) -> Request:
        return max(self._admitted(), key=lambda r: r.submitted_at)

    def _release(self, request: Request) -> None:
        """Forget every sequence of `request` and free its blocks."""
        for prefill in [p for p in self._prefilling if p.request is request]:
            self._prefilling.remove(prefill)
            self.core.free(prefill.seq_id)
        for choice in [c for c in self._running if c.request is request]:
            self._running.remove(choice)
            self.core.free(choice.seq_id)
            self.speculator.release(choice.seq_id, None)

    def _fail(self, request: Request, message: str) -> None:
        self._release(request)
        self.metrics.ended(request.report)
        request.emit(Failed(message))

    def _fail_admitted(self, message: str) -> None:
        for request in self._admitted():
            self._fail(request, message)


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
        max_batch_size: int = 8,
        max_queue: int = 32,
        step_tokens: int = STEP_TOKENS,
        kv_cache_bytes: int = KV_CACHE_BYTES,
        kv_tiers: TierSizes = TierSizes(),
        speculation: SpeculationOptions = SpeculationOptions(),
    ) -> None:
        self.available = set(available)
        self._load = load
        self._worker_options = dict(max_batch_size=max_batch_size, max_queue=max_queue, step_tokens=step_tokens,
                                    kv_cache_bytes=kv_cache_bytes, kv_tiers=kv_tiers, speculation=speculation)
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
        draft_name = self._worker_options["speculation"].draft_model

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
                self._workers[name] = ModelWorker(model, draft=draft, **self._worker_options)
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
