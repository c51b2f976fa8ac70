"""One model's worker: a thread that runs the scheduler, the engine core and the output processor, a step at a time.

Each iteration: retire the requests whose client went away; draft blocks for the speculating sequences; let the
`Scheduler` decide the step; run it on the `EngineCore` (one forward pass); hand its logits to the
`OutputProcessor`, and apply what it decided (the next token of each sequence, the rolled-back tail of a drafted
block, the sequences that finished) back to the scheduler.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

import numpy as np
from tiered_kv_cache import KVCacheManager, KVPool, NoFreeBlocks

from mimo_core.extensions import SpeculationRequest
from mimo_engine.config import EngineConfig
from mimo_engine.costs import StepCosts, StepTiming
from mimo_engine.metrics import WorkerGauges, WorkerMetrics
from mimo_engine.output import OutputProcessor
from mimo_engine.runtime import BLOCK_SIZE, EngineCore, LoadedModel, PrecisionPlan
from mimo_engine.scheduler import EngineRequest, Prefill, QueueFull, Scheduler, Sequence, Unservable
from mimo_engine.speculation import DraftAsk, DrafterContext, SuffixCorpus, build_speculator

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.5  # how long an idle worker sleeps before looking at its flags again


class Unavailable(RuntimeError):
    """The request cannot be served now: its model failed to load, or the server is shutting down."""


def block_bytes(model: LoadedModel) -> int:
    """Bytes of one KV block of the model, keys and values of every layer."""
    c = model.config
    return KVPool.block_bytes(c.n_layer, c.n_kv_head, c.head_dim, BLOCK_SIZE)


def kv_blocks(model: LoadedModel, max_batch_size: int, kv_cache_bytes: int) -> int:
    """Blocks in the pool: enough for every running sequence at full context, within the byte budget, and never
    fewer than one full context."""
    one_context = math.ceil(model.config.context_length / BLOCK_SIZE) + 1  # a request alone always fits
    return max(one_context, min(max_batch_size * one_context, kv_cache_bytes // block_bytes(model)))


def draft_core(target: LoadedModel, draft: LoadedModel, config: EngineConfig) -> EngineCore:
    """The draft model's own core; ValueError if it cannot draft for `target` (another tokenizer, a shorter
    context)."""
    if not draft.tokenizer.same_vocabulary(target.tokenizer) or draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"the draft model {draft.name} does not share {target.name}'s tokenizer")
    if draft.config.context_length < target.config.context_length:
        raise ValueError(f"the draft model {draft.name} has a shorter context than {target.name}")
    return EngineCore(draft, kv_blocks(draft, config.max_batch_size, config.kv_cache_bytes))


class ModelWorker:
    """Serves one model: a bounded waiting queue and a thread that runs the continuous-batching loop."""

    def __init__(self, model: LoadedModel, config: EngineConfig = EngineConfig(),
                 draft: LoadedModel | None = None, on_step: Callable[[StepTiming], None] | None = None) -> None:
        self.model = model
        self.config = config
        self.on_step = on_step  # hears each step's timing, from the worker thread (the benchmark's log)
        self.core = EngineCore(model, kv_blocks(model, config.max_batch_size, config.kv_cache_bytes),
                               config.kv_tiers.in_blocks(block_bytes(model)))
        self.scheduler = Scheduler(self.core, config.max_batch_size, config.capacity, config.step_tokens,
                                   config.prefill_stall)
        self.costs = StepCosts()  # what decode tokens and prompt tokens cost a step, measured on the steps that ran
        self.metrics = WorkerMetrics()
        self.output = OutputProcessor(model.name, model.tokenizer, self.metrics)
        drafting = DrafterContext(self.core, draft_core(model, draft, config) if draft else None, SuffixCorpus())
        self.speculator, self.unserved = build_speculator(drafting)  # and why each other drafter is not served
        if config.speculation.method in self.unserved:
            raise ValueError(self.unserved[config.speculation.method])
        self.last_active = time.monotonic()
        self._wakeup = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"mimo-engine:{model.name}", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """Whether any request is waiting, prefilling or running."""
        return self.scheduler.busy

    def submit(self, request: EngineRequest) -> None:
        """Queue a request, its precision plan and speculation resolved (those it names none of: the model's default
        policy, the worker's default speculation). Unservable if it can never run, QueueFull if the queue is at
        capacity, Unavailable once the worker is closed."""
        self.scheduler.check(request)
        mimo = request.mimo
        try:
            request.precision = PrecisionPlan.of(self.model, mimo.precision and mimo.precision.policy)
        except ValueError as exc:  # an unknown policy, or one whose formats this model does not hold
            raise Unservable(str(exc), "precision") from None
        default = self.config.speculation
        asked = mimo.speculation or SpeculationRequest(default.method, default.block)
        if asked.method in self.unserved:
            raise Unservable(self.unserved[asked.method], "speculation")
        request.speculation = asked if asked.method != "none" else None
        with self._wakeup:
            if self._closed:
                raise Unavailable("the server is shutting down")
            if not self.scheduler.has_room(request.params.n):
                self.metrics.rejected += 1
                raise QueueFull(self.model.name)
            self.output.accepted(request, asked)
            self.scheduler.add(request)
            self.last_active = time.monotonic()
            self._wakeup.notify()

    def close(self) -> None:
        """Stop the worker thread; requests still queued or running get a Failed event."""
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()
        self._thread.join()

    @property
    def kv(self) -> KVCacheManager:
        """The model's KV block manager."""
        return self.core.blocks

    def gauges(self) -> WorkerGauges:
        """The worker's state now, for /metrics."""
        blocks = self.core.blocks
        looked_up = blocks.stats.lookup_tokens
        return WorkerGauges(
            waiting=len(self.scheduler.waiting),
            running=len(self.scheduler.running),
            prefilling=len(self.scheduler.prefilling),
            kv_blocks_used=blocks.num_used_blocks,
            kv_blocks_free=blocks.num_free_blocks,
            kv_blocks_cached=blocks.num_cached_blocks,
            prefix_hit_rate=blocks.stats.total_hit_tokens / looked_up if looked_up else 0.0,
            tokens_per_s=self.metrics.tokens_per_s(),
        )

    # ---------------------------------------------------------------- the loop

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
        for request in self.scheduler.take_waiting(cancelled_only=False):
            self.output.failed(request, "the server is shutting down")
        try:
            self.core.close()  # cached blocks go down to the disk tier, for the next process
        except Exception:  # a failing disk must not stop the shutdown
            log.exception("model %s: could not move its KV blocks to disk", self.model.name)

    def _step(self) -> None:
        """Draft, schedule and run one step, and advance every sequence in it."""
        self._draft()
        decision = self.scheduler.schedule(self.costs.chunk_cost(self.scheduler.decode_tokens()))
        for admission in decision.admitted:
            self.output.admitted(admission.request, admission.cached)
        if not decision.work:
            return
        chunks = tuple((w.num_tokens, self.core.sequences[w.seq_id].num_computed)
                       for w, owner in zip(decision.work, decision.owners) if isinstance(owner, Prefill))
        started = time.perf_counter()
        try:
            results = self.core.step(decision.work)
        except NoFreeBlocks:  # the pool ran out mid-generation: the newest request gives way, with a clear reason
            self.scheduler.drop_drafts()  # drafted blocks wait for no one
            self._fail(self.scheduler.newest(), "the KV cache is full: the request was stopped to let the others "
                                                "finish")
            return
        elapsed = time.perf_counter() - started
        timing = StepTiming(sum(w.num_tokens for w in decision.work) - sum(n for n, _ in chunks), chunks, elapsed)
        self.costs.observe(timing)
        if decision.decode_only:  # what drafting is weighed against: decode steps
            self.speculator.step_cost.observe(timing.decode_tokens, elapsed)
        if self.on_step:
            self.on_step(timing)
        self.output.stepped(decision, elapsed, self.model.plan_reads)
        for owner, logits in zip(decision.owners, results):
            if isinstance(owner, Prefill):
                self._prefilled(owner, logits)
            else:
                self._advance(owner, logits)
        self.last_active = time.monotonic()

    def _draft(self) -> None:
        """Draft blocks for the speculating sequences, as many tokens as pay off (`Speculator.lengths`), and append
        them to their sequences for this step to verify."""
        running = self.scheduler.running
        asks = []
        for s in running:
            if s.speculation:
                tokens = self.core.sequences[s.seq_id].token_ids
                room = min(s.max_tokens - self.output.generated(s), self.model.config.context_length - len(tokens)) - 1
                asks.append((s.speculation, DraftAsk(s.seq_id, tokens, min(s.speculation.block, room),
                                                     s.request.params, s.rng)))
        if not asks:
            return
        drafts, seconds = self.speculator.draft(asks, len(running))
        for s in running:
            if s.speculation:
                s.draft = drafts.get(s.seq_id)
                if s.draft:
                    self.core.append(s.seq_id, s.draft.tokens)
                self.output.drafted(s, s.draft, seconds.get(s.speculation.method, 0.0))

    def _prefilled(self, prefill: Prefill, logits: np.ndarray) -> None:
        """A prompt chunk ran; once the whole prompt is in, start its choices with a token sampled from its logits."""
        self.output.prompt_chunk(prefill.request, logits)
        if self.core.pending(prefill.seq_id):
            return
        sequences = self.scheduler.prefilled(prefill)
        self.output.prompt_done(prefill.request, sequences)
        for s in sequences:
            if s.max_tokens == 0:
                self.output.empty(s)
                self._retire(s)
            else:
                self.scheduler.start(s)
                self._advance(s, logits[-1:])

    def _advance(self, sequence: Sequence, logits: np.ndarray) -> None:
        """Apply the output processor's verdict on this step's logits: roll back the rejected tail of a drafted
        block, then queue the next token, or retire the sequence if it finished."""
        drafted = len(sequence.draft.tokens) if sequence.draft else 0
        outcome = self.output.process(sequence, logits)
        sequence.draft = None
        if outcome.accepted is not None:  # accepted tokens stay computed; the rest is rolled back
            kept = len(self.core.sequences[sequence.seq_id].token_ids) - drafted + outcome.accepted
            self.core.truncate(sequence.seq_id, kept)
        if outcome.next_token is None:
            self._retire(sequence)
            return
        sequence.plan = outcome.plan
        self.core.append(sequence.seq_id, [outcome.next_token])  # the last token is computed next step

    def _retire(self, sequence: Sequence) -> None:
        """A sequence finished: free its blocks, let the drafters learn from it, and tell its request."""
        self.scheduler.finish(sequence)
        self.speculator.release(sequence.seq_id, self.output.tokens(sequence))
        self.output.finished(sequence)

    def _retire_cancelled(self) -> None:
        """Drop the requests whose client went away, freeing their blocks at once."""
        for request in [r for r in self.scheduler.admitted() if r.cancelled]:
            self._release(request)
            self.output.cancelled(request)  # what it computed before its client left stays counted
        for request in self.scheduler.take_waiting(cancelled_only=True):
            self.output.cancelled(request)

    def _release(self, request: EngineRequest) -> None:
        for s in self.scheduler.release(request):
            self.speculator.release(s.seq_id, None)

    def _fail(self, request: EngineRequest, message: str) -> None:
        self._release(request)
        self.output.failed(request, message)

    def _fail_admitted(self, message: str) -> None:
        for request in self.scheduler.admitted():
            self._fail(request, message)
