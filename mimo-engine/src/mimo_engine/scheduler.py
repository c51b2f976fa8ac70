"""Continuous batching with chunked prefill: the scheduler decides what each engine step computes, nothing else.

Each step, in order: every decoding sequence gets its next token (and the block drafted for it, to verify); prompts
being prefilled get chunks from what is left of the per-step token budget; waiting requests are admitted while the
batch has room and the KV pool has blocks for their prompt, each starting from its longest cached prefix. So a long
prompt does not stall running streams: it shares steps with them, a chunk at a time, and in a step that decodes,
the chunks are also cut to what the step's time bound (`PrefillStall`) leaves, by the measured cost of a prompt
token at its position (`ChunkCost`: the worker measures, the scheduler only reads). A request's `n` choices share
its prompt's blocks (one prefill, then copy-on-write forks), and a sequence's blocks are released the moment it
finishes, fails or is cancelled.

The scheduler knows requests (`EngineRequest`), sequences and KV blocks (through `EngineCore`); it samples nothing,
writes no report and knows neither asyncio nor HTTP: the output processor and the server do that.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from tiered_kv_cache import NoFreeBlocks

from mimo_core.extensions import MimoRequest, SpeculationRequest
from mimo_engine.config import DEFAULTS, PrefillStall
from mimo_engine.costs import ChunkCost
from mimo_engine.runtime import BLOCK_SIZE, EngineCore, PrecisionPlan, Work
from mimo_engine.sampling import SamplingParams, choice_rngs
from mimo_engine.speculation import Draft, SequenceSpeculation
from mimo_engine.step import WeightPlan

# The fewest tokens a step gives the oldest prompt being prefilled, whatever its time bound leaves: the prompt always
# advances, and before any chunk was measured this is the chunk that measures the cost. 32: smaller chunks cost more
# a token (a 1,536-token prompt prefilled alone on smollm2-135m, 2 threads: 4.2 ms a token in chunks of 32, 4.4 in
# chunks of 16), and one of 32 costs ~190 ms even at position 1,500, within the default time bound.
MIN_CHUNK = 32


class QueueFull(RuntimeError):
    """The model's queue is at capacity: the request is refused, not queued."""

    def __init__(self, model: str) -> None:
        super().__init__(f"the queue of model {model!r} is full")
        self.model = model


class Unservable(ValueError):
    """A request this worker can never run; `field` names the part of the request at fault (`prompt`, `n`,
    `precision` or `speculation`), which the server turns into its API's parameter path."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(eq=False)
class EngineRequest:
    """A request as the engine runs it: the prompt, sampling, what it asks of the engine (its `mimo` extension, whose
    precision plan and speculation are resolved once, at submission), where its events go (`sink`, called from the
    worker thread), and whether its client went away."""

    prompt: list[int]
    params: SamplingParams
    sink: Callable[[object], None]
    prompt_logprobs: int | None = None  # None: not wanted; k: score each prompt token, with the top k
    mimo: MimoRequest = field(default_factory=MimoRequest)  # what it asks of the engine
    precision: PrecisionPlan | None = None  # resolved from `mimo` by the worker it is submitted to
    speculation: SpeculationRequest | None = None  # likewise (None: plain decoding)
    load_s: float = 0.0  # how long it waited for its model to load
    cancelled: bool = False
    arrived_at: float = field(default_factory=time.monotonic)

    @property
    def reuse(self) -> bool:
        """Whether the prompt may start from cached blocks: asked for, and no logits wanted at cached positions."""
        return self.mimo.cache_enabled and self.prompt_logprobs is None


@dataclass(eq=False)
class Sequence:
    """One choice of a request being decoded: its KV sequence, its generator, how many tokens it may still take,
    the weight plan of its next token, and its speculation (None: a token per step) with the block this step
    verifies."""

    seq_id: Hashable
    index: int  # the choice's index in its request
    request: EngineRequest
    rng: np.random.Generator
    max_tokens: int
    plan: WeightPlan | None = None  # the weight formats its next token reads (the precision policy's choice)
    speculation: SequenceSpeculation | None = None
    draft: Draft | None = None


@dataclass(eq=False)
class Prefill:
    """A request whose prompt is being computed, a chunk per step, in the sequence `seq_id`."""

    seq_id: Hashable
    request: EngineRequest


@dataclass(frozen=True)
class Admission:
    """A request that left the queue this step, and the prompt tokens it reused from each KV tier."""

    request: EngineRequest
    cached: dict[str, int]


@dataclass(frozen=True)
class SchedulerOutput:
    """One step's decision: the work in batch order, whose it is (a `Prefill` or a decoding `Sequence`), and the
    requests admitted."""

    work: list[Work]
    owners: list[Prefill | Sequence]
    admitted: list[Admission]

    @property
    def decode_only(self) -> bool:
        """Whether no prompt chunk is in the step (what drafting is weighed against)."""
        return not any(isinstance(o, Prefill) for o in self.owners)


def chunk_tokens(pending: int, budget: int, seconds: float | None, cost: ChunkCost | None, position: int,
                 first: bool) -> int:
    """Tokens of a prompt's next chunk: its `pending` tokens, within the step's token `budget` and, unless `seconds`
    is None, within the seconds left to chunks as `cost` measures a chunk from `position` (None: unmeasured, a
    MIN_CHUNK probe); the `first` chunk of a step is never cut below MIN_CHUNK by time."""
    most = min(pending, budget)
    if seconds is None:
        return most
    fits = MIN_CHUNK if cost is None else cost.tokens_within(seconds, position)
    return min(most, max(fits, MIN_CHUNK) if first else fits)


class Scheduler:
    """The queues of one model (waiting, prefilling, running) and the choice of each step's work."""

    def __init__(self, core: EngineCore, max_batch_size: int, capacity: int, step_tokens: int,
                 stall: PrefillStall = DEFAULTS.prefill_stall) -> None:
        self.core = core
        self.max_batch_size = max_batch_size
        self.capacity = capacity  # sequences running plus waiting
        self.step_tokens = step_tokens
        self.stall = stall
        self.waiting: deque[EngineRequest] = deque()
        self.prefilling: list[Prefill] = []
        self.running: list[Sequence] = []
        self._ids = itertools.count()
        self._lock = threading.Lock()  # the waiting queue: submitters add, the loop admits

    @property
    def busy(self) -> bool:
        """Whether any request is waiting, prefilling or running."""
        return bool(self.waiting or self.prefilling or self.running)

    def check(self, request: EngineRequest) -> None:
        """Unservable if `request` can never run here (an empty or too long prompt, more choices than a batch)."""
        context = self.core.model.config.context_length
        if not request.prompt:
            raise Unservable("the prompt is empty", "prompt")
        if len(request.prompt) >= context:
            raise Unservable(f"the prompt has {len(request.prompt)} tokens; this model's context is {context}")
        if request.params.n > self.max_batch_size:
            raise Unservable(f"n may be at most the server's max batch size, {self.max_batch_size}", "n")

    def has_room(self, n: int) -> bool:
        """Whether `n` more sequences fit in the batch and the queue."""
        with self._lock:
            return sum(r.params.n for r in self.waiting) + self._sequences() + n <= self.capacity

    def add(self, request: EngineRequest) -> None:
        """Queue a request (the caller has checked it and its room)."""
        with self._lock:
            self.waiting.append(request)

    def _sequences(self) -> int:
        """Sequences admitted: decoding choices, and the choices that prompts being prefilled will become."""
        return len(self.running) + sum(p.request.params.n for p in self.prefilling)

    def decode_tokens(self) -> int:
        """Tokens the next step computes for the decoding sequences: a token each, and the blocks drafted for them."""
        return sum(1 + (len(s.draft.tokens) if s.draft else 0) for s in self.running)

    def schedule(self, cost: ChunkCost | None = None) -> SchedulerOutput:
        """This step's work: a token for every decoding sequence (and its drafted block), then prompt chunks within
        what is left of the token budget and, in a step that decodes, of its time bound as `cost` measures it (None:
        nothing measured yet), admitting waiting requests while there is room."""
        work: list[Work] = []
        owners: list[Prefill | Sequence] = []
        for s in self.running:
            drafted = len(s.draft.tokens) if s.draft else 0
            work.append(Work(s.seq_id, 1 + drafted, "all" if drafted else "last", s.plan))
            owners.append(s)
        budget = self.step_tokens - sum(w.num_tokens for w in work)
        seconds = self._chunk_seconds(cost) if work else None  # None: no time bound
        admitted: list[Admission] = []
        prompts, chunked = iter(list(self.prefilling)), 0
        while budget > 0 and (seconds is None or seconds > 0 or not chunked):
            prefill = next(prompts, None)
            if prefill is None:
                if not (admission := self._admit()):
                    break
                admitted.append(admission)
                prefill = self.prefilling[-1]
            position = self.core.sequences[prefill.seq_id].num_computed
            tokens = chunk_tokens(self.core.pending(prefill.seq_id), budget, seconds, cost, position, not chunked)
            if not tokens:
                break
            work.append(self._chunk(prefill, tokens))
            owners.append(prefill)
            budget, chunked = budget - tokens, chunked + 1
            if seconds is not None:  # an unmeasured cost: the probe chunk takes it all
                seconds -= cost.seconds(tokens, position) if cost else seconds
        return SchedulerOutput(work, owners, admitted)

    def _chunk_seconds(self, cost: ChunkCost | None) -> float | None:
        """Seconds a step that decodes leaves its prompt chunks: its time bound less its decode tokens' own (None: no
        time bound)."""
        if self.stall.seconds <= 0:
            return None
        decode_s = cost.decode_s if cost else 0.0
        return self.stall.bound(decode_s) - decode_s

    def _chunk(self, prefill: Prefill, n: int) -> Work:
        pending = self.core.pending(prefill.seq_id)
        scored = prefill.request.prompt_logprobs is not None
        return Work(prefill.seq_id, n, "all" if scored else "last" if n == pending else "none",
                    prefill.request.precision.prompt)

    def _admit(self) -> Admission | None:
        """Start the oldest waiting request if the batch has room for its choices and the pool for its prompt."""
        with self._lock:
            if not self.waiting or self._sequences() + self.waiting[0].params.n > self.max_batch_size:
                return None
            request = self.waiting[0]
            if self.core.blocks.num_free_blocks < math.ceil(len(request.prompt) / BLOCK_SIZE):
                return None  # it waits until running sequences finish and free their blocks
            seq_id = next(self._ids)
            try:
                # cached blocks are found among those computed under the same weight plan as this prompt's
                cached = self.core.add(seq_id, request.prompt, reuse=request.reuse, plan=request.precision.prompt)
            except NoFreeBlocks:
                return None
            self.waiting.popleft()
        self.prefilling.append(Prefill(seq_id, request))
        return Admission(request, cached)

    def prefilled(self, prefill: Prefill) -> list[Sequence]:
        """A prompt is in: one sequence per choice, the first continuing the prompt's, the others forking its
        blocks. They are not running yet: `start` them (a choice with no room to generate is finished at once)."""
        self.prefilling.remove(prefill)
        request, params = prefill.request, prefill.request.params
        room = self.core.model.config.context_length - len(request.prompt)
        max_tokens = room if params.max_tokens is None else min(room, params.max_tokens)
        seq_ids = [prefill.seq_id]
        for _ in range(params.n - 1):
            seq_ids.append(next(self._ids))
            self.core.fork(prefill.seq_id, seq_ids[-1])
        asked = request.speculation
        return [Sequence(seq_id, i, request, rng, max_tokens,
                         speculation=SequenceSpeculation(asked.method, asked.block, asked.adaptive) if asked else None)
                for i, (seq_id, rng) in enumerate(zip(seq_ids, choice_rngs(params.seed, params.n)))]

    def start(self, sequence: Sequence) -> None:
        """Decode `sequence` from the next step on."""
        self.running.append(sequence)

    def finish(self, sequence: Sequence) -> None:
        """Retire a sequence that ended and free its blocks."""
        if sequence in self.running:
            self.running.remove(sequence)
        self.core.free(sequence.seq_id)

    def drop_drafts(self) -> None:
        """Roll back every drafted block not yet verified (the step that would have verified them did not run)."""
        for s in self.running:
            if s.draft:
                self.core.truncate(s.seq_id, len(self.core.sequences[s.seq_id].token_ids) - len(s.draft.tokens))
                s.draft = None

    def admitted(self) -> list[EngineRequest]:
        """Requests being prefilled or decoded, oldest first."""
        requests = [p.request for p in self.prefilling] + [s.request for s in self.running]
        return list({id(r): r for r in requests}.values())

    def newest(self) -> EngineRequest:
        """The admitted request that arrived last: the one that gives way when the pool runs out."""
        return max(self.admitted(), key=lambda r: r.arrived_at)

    def release(self, request: EngineRequest) -> list[Sequence]:
        """Forget every sequence of an admitted `request` and free its blocks; its decoding sequences."""
        for prefill in [p for p in self.prefilling if p.request is request]:
            self.prefilling.remove(prefill)
            self.core.free(prefill.seq_id)
        dropped = [s for s in self.running if s.request is request]
        for s in dropped:
            self.running.remove(s)
            self.core.free(s.seq_id)
        return dropped

    def take_waiting(self, cancelled_only: bool) -> list[EngineRequest]:
        """Take the waiting requests out of the queue (only the cancelled ones, with `cancelled_only`)."""
        with self._lock:
            taken = [r for r in self.waiting if r.cancelled or not cancelled_only]
            self.waiting = deque(r for r in self.waiting if not (r.cancelled or not cancelled_only))
        return taken

