"""The output processor: what a step's logits become. It samples each sequence's next token (or verifies its drafted
block), detokenises, applies stop strings and max_tokens, computes logprobs, sends each request its events, and
builds the whole `mimo` report of a request, here and nowhere else, counting it into the worker's metrics as it goes.

Events a request's sink receives, in order: `Delta`* per choice, then one `Done` or `Failed`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np

from mimo_core.extensions import MimoReport, SpeculationRequest
from mimo_engine.metrics import WorkerMetrics
from mimo_engine.sampling import StopMatcher, TokenLogprob, Utf8Stream, log_softmax, sample_token, token_logprob
from mimo_engine.scheduler import EngineRequest, Prefill, SchedulerOutput, Sequence
from mimo_engine.speculation import Draft, verify
from mimo_engine.step import WeightPlan
from mimo_engine.tokenizer import Tokenizer


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


Event = Delta | Done | Failed


@dataclass
class ChoiceState:
    """The text state of one choice: its result so far, its detokeniser and stop matcher, and when its last token
    came."""

    result: ChoiceResult
    text: Utf8Stream
    stop: StopMatcher
    last_token_at: float = 0.0


@dataclass
class RequestState:
    """A request's outputs in the making: its report, its choices once its prompt is in, and its prompt's logits
    while they are scored chunk by chunk."""

    report: MimoReport
    choices: dict[Hashable, ChoiceState] = field(default_factory=dict)  # by sequence, in the choices' order
    prompt_rows: list[np.ndarray] = field(default_factory=list)
    prompt_scores: list[TokenLogprob | None] | None = None


@dataclass(frozen=True)
class Outcome:
    """What one step did to a decoding sequence: how many of its drafted tokens were accepted (None: it had no
    draft), the token to compute next step (None: it finished), and the weight plan that token reads."""

    accepted: int | None
    next_token: int | None
    plan: WeightPlan | None = None


class OutputProcessor:
    """Turns the logits of one model's steps into tokens, events and reports."""

    def __init__(self, model_name: str, tokenizer: Tokenizer, metrics: WorkerMetrics) -> None:
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.metrics = metrics
        self._requests: dict[int, RequestState] = {}
        self._choices: dict[Hashable, ChoiceState] = {}

    def _state(self, request: EngineRequest) -> RequestState:
        return self._requests[id(request)]

    def report(self, request: EngineRequest) -> MimoReport:
        """The request's report as it stands."""
        return self._state(request).report

    # ---------------------------------------------------------------- a request's life

    def accepted(self, request: EngineRequest, speculation: SpeculationRequest) -> None:
        """A request was queued with `speculation` (method "none" too): start its report with what it asked, and
        count it from now on."""
        report = MimoReport(model=self.model_name, load_s=request.load_s)
        report.cache.enabled = request.mimo.cache_enabled
        policy = request.precision.policy
        report.precision.policy = policy.name
        report.precision.thresholds = {  # infinities are not JSON: say what they mean
            group: "always" if t == math.inf else "never" if t == -math.inf else round(t, 6)
            for group, t in policy.thresholds.items()}
        report.speculation.method, report.speculation.block = speculation.method, speculation.block
        report.speculation.adaptive = speculation.adaptive
        self._requests[id(request)] = RequestState(report)
        self.metrics.requests += 1
        self.metrics.admitted(report)  # counted from now on as its work is done

    def admitted(self, request: EngineRequest, cached: dict[str, int]) -> None:
        """A request left the queue, reusing `cached` prompt tokens from each KV tier."""
        report = self.report(request)
        report.queued_s = round(time.monotonic() - request.arrived_at, 6)
        report.cache.hbm_hit_tokens, report.cache.dram_hit_tokens = cached["hbm"], cached["dram"]
        report.cache.disk_hit_tokens = cached["disk"]
        report.cache.cached_tokens = sum(cached.values())

    def drafted(self, sequence: Sequence, draft: Draft | None, seconds: float) -> None:
        """A speculating sequence's drafter ran this step (`draft` None: it proposed nothing, or was turned down)."""
        report = self.report(sequence.request).speculation
        if draft:
            report.draft_s = round(report.draft_s + seconds, 6)
        else:
            report.plain_steps += 1

    def stepped(self, output: SchedulerOutput, elapsed: float, reads: Callable[[WeightPlan | None], tuple]) -> None:
        """A step ran in `elapsed` seconds: count it into each request in it, with the weights its work read
        (`reads(plan)`: formats by group, weight bytes and weights one token under that plan reads)."""
        touched: set[int] = set()
        for work, owner in zip(output.work, output.owners):
            report = self.report(owner.request)
            if id(owner.request) not in touched:
                touched.add(id(owner.request))
                report.steps += 1
                report.batch_sizes = sorted({*report.batch_sizes, len(output.work)})
                if isinstance(owner, Prefill):
                    report.prefill_s = round(report.prefill_s + elapsed, 6)
                else:
                    report.decode_s = round(report.decode_s + elapsed, 6)
            report.precision.count(*reads(work.plan), work.num_tokens)
            if isinstance(owner, Prefill):
                report.cache.prefilled_tokens += work.num_tokens  # counted as computed, not when admitted
        self.metrics.steps += 1
        self.metrics.step_tokens.observe(sum(w.num_tokens for w in output.work))

    def prompt_chunk(self, request: EngineRequest, logits: np.ndarray) -> None:
        """A chunk of the prompt ran: keep its rows when the prompt is scored."""
        if request.prompt_logprobs is not None:
            self._state(request).prompt_rows.append(logits)

    def prompt_done(self, request: EngineRequest, sequences: list[Sequence]) -> None:
        """The whole prompt is in: count it, score it if asked, and start a text state per choice."""
        state = self._state(request)
        state.report.prompt_tokens = len(request.prompt)  # counted once its prompt is in, as vLLM counts it
        if request.prompt_logprobs is not None:
            rows = np.concatenate(state.prompt_rows)  # [P, V]
            state.prompt_rows = []
            logprobs = log_softmax(rows[:-1])  # [P-1, V]: row i predicts prompt token i+1
            state.prompt_scores = [None, *(token_logprob(row, token, request.prompt_logprobs)
                                           for row, token in zip(logprobs, request.prompt[1:]))]
        for s in sequences:
            choice = ChoiceState(ChoiceResult(s.index), Utf8Stream(self.tokenizer), StopMatcher(request.params.stop))
            state.choices[s.seq_id] = self._choices[s.seq_id] = choice

    def generated(self, sequence: Sequence) -> int:
        """Tokens the sequence has generated so far."""
        return len(self._choices[sequence.seq_id].result.tokens)

    def tokens(self, sequence: Sequence) -> list[int]:
        """The sequence's prompt and generated tokens."""
        return [*sequence.request.prompt, *self._choices[sequence.seq_id].result.tokens]

    # ---------------------------------------------------------------- tokens

    def process(self, sequence: Sequence, logits: np.ndarray) -> Outcome:
        """Take the sequence's next tokens from this step's logits [1 + drafted, V]: one sampled token, or the tokens
        kept of its drafted block; emit them, finishing the choice if one ends it."""
        params, draft = sequence.request.params, sequence.draft
        accepted = None
        if draft is None:
            tokens = [sample_token(logits[-1], params, sequence.rng)]
        else:
            tokens, accepted = verify(draft, logits, params, sequence.rng)
            sequence.speculation.observe(len(draft.tokens), accepted)
            self.report(sequence.request).speculation.count(len(draft.tokens), accepted)
        plan = None
        for token, row in zip(tokens, logits):
            if not self._emit(sequence, token, row):
                return Outcome(accepted, None)
            plan = sequence.request.precision.next_plan(row)  # what the next token reads, from this distribution
        return Outcome(accepted, tokens[-1], plan)

    def _emit(self, sequence: Sequence, token: int, logits: np.ndarray) -> bool:
        """Emit one token sampled from `logits` [V]; False if it finished the choice."""
        request, params = sequence.request, sequence.request.params
        choice, report = self._choices[sequence.seq_id], self.report(sequence.request)
        now = time.monotonic()
        if choice.last_token_at:
            self.metrics.inter_token_latency_s.observe(now - choice.last_token_at)
        elif choice.result.index == 0:
            report.time_to_first_token_s = round(now - request.arrived_at, 6)
        choice.last_token_at = now
        self.metrics.record_tokens(1)
        report.completion_tokens += 1
        if token in self.tokenizer.eos_ids:
            self._end(sequence, "stop", self._tail(choice))
            return False
        logprob = token_logprob(log_softmax(logits), token, params.top_logprobs) if params.logprobs else None
        choice.result.tokens.append(token)
        if logprob is not None:
            choice.result.logprobs.append(logprob)
        text, stopped = choice.stop.push(choice.text.push(token))
        if stopped:
            self._end(sequence, "stop", text, logprob)
            return False
        if len(choice.result.tokens) >= sequence.max_tokens:
            self._end(sequence, "length", text + self._tail(choice), logprob)
            return False
        choice.result.text += text
        request.sink(Delta(choice.result.index, text, logprob))
        return True

    @staticmethod
    def _tail(choice: ChoiceState) -> str:
        """The text still held back when a choice ends without a stop string: partial stop text, stray bytes."""
        return choice.stop.flush() + choice.text.flush()

    def _end(self, sequence: Sequence, reason: str, text: str, logprob: TokenLogprob | None = None) -> None:
        choice = self._choices[sequence.seq_id]
        choice.result.text += text
        choice.result.finish_reason = reason
        sequence.request.sink(Delta(choice.result.index, text, logprob, reason))

    def empty(self, sequence: Sequence) -> None:
        """A choice with no room to generate ends at once."""
        self._end(sequence, "length", "")

    def finished(self, sequence: Sequence) -> None:
        """A choice that ended has been retired; when it was its request's last, send Done."""
        del self._choices[sequence.seq_id]
        request = sequence.request
        state = self._state(request)
        if all(c.result.finish_reason for c in state.choices.values()):
            state.report.duration_s = round(time.monotonic() - request.arrived_at, 6)
            self._forget(request, finished=True)
            request.sink(Done([c.result for c in state.choices.values()], state.prompt_scores, state.report))

    def failed(self, request: EngineRequest, message: str) -> None:
        """The request was cut short: what it computed stays counted, and its sink hears why."""
        self._forget(request)
        request.sink(Failed(message))

    def cancelled(self, request: EngineRequest) -> None:
        """The request's client went away: what it computed stays counted; nobody hears of it."""
        self._forget(request)

    def _forget(self, request: EngineRequest, finished: bool = False) -> None:
        state = self._requests.pop(id(request), None)
        if state is None:
            return
        for seq_id in state.choices:
            self._choices.pop(seq_id, None)
        self.metrics.ended(state.report, finished)
