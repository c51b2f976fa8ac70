"""The stage: the record's speculation at both granularities.

Token level: the block drafter of the record's later calls (and of this stage's own), chosen per domain from each
drafter's measured acceptance (`calibration`), switched off for later calls when this record's own oracle calls
accepted too little of what it drafted.
Step level, the loop: draft k steps, verify them in one request, keep the accepted prefix, the oracle writes the
next step; repeated until the chain holds a final answer, a model ends it, or the step or token budget is spent.
The loop runs only where the pair's calibration says it can pay (`step_drafting="auto"`); otherwise the stage steps
aside, says why, and the agents reason alone, as with the component disabled."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from mimo_core.answers import extract_answer
from mimo_core.client import Completion
from mimo_core.prompts import shared_prefix
from mimo_core.record import TaskRecord
from mimo_core.stage import StageContext, run_stage

from . import backend
from .calibration import BLOCK, DRAFTERS, Calibrations
from .scoring import accepted_prefix
from .section import (
    Criterion,
    Reasoning,
    Round,
    Scoring,
    Step,
    StepDrafting,
    Stopped,
    Tokens,
    TokenSpeculation,
)
from .steps import (
    DELIMITER,
    continuation,
    final_answer,
    first_step,
    join_steps,
    split_steps,
)

STAGE = "spec-reasoner"
MAX_K = 16  # prompts in one scoring request (the engine's batch is 8; more would queue)
STEP_DRAFTING = ("auto", "always", "never")
# Later calls keep the drafter only if this record's own oracle calls accepted at least this share of its drafts,
# judged once they drafted enough tokens to tell (the engine's adaptive drafting still decides step by step).
MIN_ACCEPTANCE, MIN_DRAFTED = 0.25, 16


@dataclass(frozen=True)
class ReasoningOptions:
    """How the loop runs: steps drafted per round, acceptance threshold, budgets (the models come from settings)."""

    k: int = 3
    threshold: float = 7.0
    max_steps: int = 16
    max_tokens: int = 512  # completion tokens of the chain, drafted and written
    step_tokens: int = 128  # the most tokens of one step
    delimiter: str = DELIMITER
    step_drafting: str = "auto"  # auto: where the calibration says it pays; always / never: as told (the bench)
    criterion: Criterion = "rating"  # how `always` verifies; `auto` takes the calibration's better criterion
    drafter: str = "auto"  # the block drafter of the record's calls: auto (measured per domain), none, ngram, suffix

    def __post_init__(self) -> None:
        checks = [
            (1 <= self.k <= MAX_K, f"k must be 1..{MAX_K}, not {self.k}"),
            (0.0 <= self.threshold <= 9.0, f"threshold must be 0..9, not {self.threshold}"),
            (self.max_steps >= 1, f"max_steps must be at least 1, not {self.max_steps}"),
            (self.max_tokens >= 1, f"max_tokens must be at least 1, not {self.max_tokens}"),
            (self.step_tokens >= 1, f"step_tokens must be at least 1, not {self.step_tokens}"),
            (self.delimiter.strip() == "" and self.delimiter != "", "the delimiter must be whitespace, such as \\n\\n"),
            (self.step_drafting in STEP_DRAFTING, f"step_drafting must be one of {', '.join(STEP_DRAFTING)}"),
            (self.criterion in ("rating", "logprob"), "criterion must be rating or logprob"),
            (self.drafter in ("auto", "none", *DRAFTERS),
             f"drafter must be auto, none or one of {', '.join(DRAFTERS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class Chain:
    """The state of one record's loop: the steps kept, what each model spent, the rounds."""

    steps: list[Step] = field(default_factory=list)
    draft: Tokens = field(default_factory=Tokens)
    oracle: Tokens = field(default_factory=Tokens)
    rounds: list[Round] = field(default_factory=list)
    drafted: int = 0
    accepted: int = 0
    verify_requests: int = 0
    stopped: Stopped | None = None

    def texts(self) -> list[str]:
        return [s.text for s in self.steps]

    def tokens(self) -> int:
        return sum(s.tokens for s in self.steps)


def count(tokens: Tokens, result: Completion) -> None:
    """Add a call's usage to a model's tokens (cached ones from the embedded engine's report)."""
    tokens.prompt += result.usage.prompt_tokens
    tokens.completion += result.usage.completion_tokens
    cache = (result.engine or {}).get("cache")
    if isinstance(cache, dict) and isinstance(cache.get("cached_tokens"), int):
        tokens.cached += cache["cached_tokens"]


def keep(chain: Chain, step: Step, domain: str, options: ReasoningOptions) -> bool:
    """Append a step; True when the chain is finished (a final answer, or a budget spent)."""
    chain.steps.append(step)
    if final_answer(domain, join_steps(chain.texts(), options.delimiter)) is not None:
        chain.stopped = "answer"
    elif len(chain.steps) >= options.max_steps:
        chain.stopped = "max_steps"
    elif chain.tokens() >= options.max_tokens:
        chain.stopped = "max_tokens"
    return chain.stopped is not None


class Reasoner:
    """The stage's work (`process`): one per process, so the endpoint's scoring support is probed and the model
    pair calibrated once."""

    def __init__(self, options: ReasoningOptions = ReasoningOptions(), capabilities: backend.Capabilities | None = None,
                 calibrations: Calibrations | None = None) -> None:
        self.options = options
        self.capabilities = capabilities or backend.Capabilities()
        self.calibrations = calibrations or Calibrations(options.k)

    async def process(self, record: TaskRecord, ctx: StageContext) -> None:
        """Write `reasoning`: first the token-level drafter (so that this stage's own calls run under it), then the
        chain where step drafting pays, then whether later calls keep the drafter."""
        draft_model, oracle_model = ctx.settings.drafter_model, ctx.settings.oracle_model
        speculation = await self.token_speculation(record, ctx, draft_model, oracle_model)
        record.reasoning = {"speculation": speculation.to_dict()}
        drafting = await self.step_drafting(ctx, draft_model, oracle_model)
        if not drafting.used:
            record.reasoning["step_drafting"] = drafting.to_dict()
            return
        reasoning = await self.reason(record, ctx, criterion=drafting.criterion, threshold=drafting.threshold)
        reasoning.speculation, reasoning.step_drafting = judge(speculation, ctx), drafting
        record.reasoning = reasoning.to_dict()

    async def token_speculation(self, record: TaskRecord, ctx: StageContext, draft_model: str,
                                oracle_model: str) -> TokenSpeculation:
        """The block drafter for the record's calls: per domain, by measured acceptance; none where the backend
        takes no speculation per request."""
        if not ctx.settings.send_extensions:
            return TokenSpeculation("none", reason="a remote server's speculative decoding is its own: it cannot be "
                                                   "set per request", settable=False)
        if self.options.drafter != "auto":
            method = self.options.drafter
            return TokenSpeculation(method, BLOCK if method != "none" else None, reason=f"--drafter {method}")
        method, why = await self.calibrations.drafter(ctx, oracle_model, record.domain)
        return TokenSpeculation(method, BLOCK if method != "none" else None, reason=why)

    async def step_drafting(self, ctx: StageContext, draft_model: str, oracle_model: str) -> StepDrafting:
        """Whether this record's chain is drafted step by step, with which criterion, and why."""
        opts = self.options
        if opts.step_drafting == "never":
            return StepDrafting(False, reason="step drafting is off (--step-drafting never)")
        if opts.step_drafting == "always":
            return StepDrafting(True, opts.criterion, opts.threshold if opts.criterion == "rating" else None,
                                reason="step drafting is on (--step-drafting always)")
        if await self.capabilities.scoring(ctx, oracle_model) != "completions":
            return StepDrafting(False, reason="the endpoint returns no completions logprobs: the calibration, and a "
                                              "round's verification in one request, need them")
        calibration = await self.calibrations.pair(ctx, draft_model, oracle_model)
        criterion = calibration.criterion
        threshold = (opts.threshold if criterion == "rating" else calibration.criteria["logprob"].threshold
                     if criterion == "logprob" else None)
        return StepDrafting(calibration.step_drafting, criterion if calibration.step_drafting else None,
                            threshold if calibration.step_drafting else None, reason=calibration.reason,
                            discrimination={name: c.discrimination for name, c in calibration.criteria.items()},
                            ms_per_token=calibration.ms_per_token)

    async def reason(self, record: TaskRecord, ctx: StageContext, alone: bool = False,
                     criterion: Criterion | None = None, threshold: float | None = None) -> Reasoning:
        """The speculative chain of one record; the oracle alone where the endpoint cannot score, or if `alone`.

        The models are MIMO_DRAFT_MODEL / MIMO_MODEL (or flags), else the engine's defaults."""
        started = time.perf_counter()
        draft_model, oracle_model = ctx.settings.drafter_model, ctx.settings.oracle_model
        mode = await self.capabilities.scoring(ctx, oracle_model)
        criterion = criterion or self.options.criterion
        threshold = self.options.threshold if threshold is None else threshold
        chain = Chain()
        if alone or mode == "unavailable":
            await oracle_alone(record, ctx, oracle_model, self.options, chain)
        else:
            while chain.stopped is None:
                await self.round(record, ctx, mode, (draft_model, oracle_model), chain, criterion, threshold)
        reasoning = section(record, chain, (draft_model, oracle_model), mode, self.options,
                            time.perf_counter() - started, criterion, threshold)
        if oracle_model in self.capabilities.one_prompt:
            reasoning.notes.append(backend.ONE_PROMPT)
        return reasoning

    async def round(self, record: TaskRecord, ctx: StageContext, mode: Scoring, models: tuple[str, str],
                    chain: Chain, criterion: Criterion, threshold: float) -> None:
        """Draft up to k steps, score them in one request, keep the accepted prefix, let the oracle write one."""
        opts, number = self.options, len(chain.rounds) + 1
        draft_model, oracle_model = models
        lap = stopwatch()
        drafts = await draft_steps(record, ctx, mode, draft_model, chain, opts)
        draft_s = lap()
        verdict = (await verify(record, ctx, mode, oracle_model, chain, drafts, opts, self.capabilities, criterion)
                   if drafts else None)
        verify_s = lap()
        scores, masses = (verdict.scores, verdict.masses) if verdict else ([], [])
        accepted = accepted_prefix(scores, threshold)
        chain.drafted += len(drafts)
        chain.accepted += accepted
        finished = any(keep(chain, Step(d.text, "draft", round(score, 4), number, d.tokens), record.domain, opts)
                       for d, score in zip(drafts[:accepted], scores))  # any() stops at the step that finishes
        # The oracle writes the first rejected step, or the next one when the draft model had nothing to add.
        wrote = not finished and (accepted < len(drafts) or not drafts)
        if wrote:
            await oracle_step(record, ctx, mode, oracle_model, chain, number, opts)
        chain.rounds.append(Round(len(drafts), [None if s is None else round(s, 4) for s in scores],
                                  [round(m, 4) for m in masses], accepted, wrote, round(draft_s, 4),
                                  round(verify_s, 4), round(lap(), 4)))


def stopwatch():
    """A function returning the seconds since it was last called (or created)."""
    last = [time.perf_counter()]

    def lap() -> float:
        now = time.perf_counter()
        seconds, last[0] = now - last[0], now
        return seconds

    return lap


@dataclass(frozen=True)
class DraftedStep:
    """A drafted step and the draft model's completion tokens for it."""

    text: str
    tokens: int


async def draft_steps(record: TaskRecord, ctx: StageContext, mode: Scoring, model: str, chain: Chain,
                      opts: ReasoningOptions) -> list[DraftedStep]:
    """Up to k steps from the draft model, one request each (a step ends at the delimiter); fewer if it ends the
    solution, writes a final answer, or would pass the chain's budgets."""
    drafts: list[DraftedStep] = []
    texts = chain.texts()
    room_steps, room_tokens = opts.max_steps - len(texts), opts.max_tokens - chain.tokens()
    while len(drafts) < min(opts.k, room_steps) and room_tokens > 0:
        solution = continuation(texts + [d.text for d in drafts], opts.delimiter)
        result = await backend.generate(ctx, mode, model, record, solution,
                                        max_tokens=min(opts.step_tokens, room_tokens), stop=[opts.delimiter])
        count(chain.draft, result)
        text = first_step(result.text, opts.delimiter)
        if not text:
            break
        drafts.append(DraftedStep(text, result.usage.completion_tokens))
        room_tokens -= result.usage.completion_tokens
        if final_answer(record.domain, join_steps(texts + [d.text for d in drafts], opts.delimiter)):
            break
    return drafts


async def verify(record: TaskRecord, ctx: StageContext, mode: Scoring, model: str, chain: Chain,
                 drafts: list[DraftedStep], opts: ReasoningOptions, capabilities: backend.Capabilities,
                 criterion: Criterion = "rating") -> backend.Scores:
    """The oracle's scores of the drafted steps: by rating, prompt i rates step i after the chain and steps 1..i-1;
    by log-probability, one prompt-logprobs pass over the chain and all k steps gives each step's mean."""
    base = chain.texts()
    if criterion == "logprob":
        verdict = await backend.score_logprobs(ctx, model, record, base, [d.text for d in drafts], opts.delimiter)
    else:
        solutions = [join_steps(base + [d.text for d in drafts[: i + 1]], opts.delimiter) for i in range(len(drafts))]
        verdict = await backend.score(ctx, mode, model, record, solutions, capabilities)
    for result in verdict.results:
        count(chain.oracle, result)
    chain.verify_requests += len(verdict.results)
    return verdict


async def oracle_step(record: TaskRecord, ctx: StageContext, mode: Scoring, model: str, chain: Chain, number: int,
                      opts: ReasoningOptions) -> None:
    """The oracle writes the next step itself; an empty one ends the chain."""
    result = await backend.generate(ctx, mode, model, record, continuation(chain.texts(), opts.delimiter),
                                    max_tokens=min(opts.step_tokens, max(1, opts.max_tokens - chain.tokens())),
                                    stop=[opts.delimiter])
    count(chain.oracle, result)
    text = first_step(result.text, opts.delimiter)
    if not text:
        chain.stopped = "end"
        return
    keep(chain, Step(text, "oracle", None, number, result.usage.completion_tokens), record.domain, opts)


async def oracle_alone(record: TaskRecord, ctx: StageContext, model: str, opts: ReasoningOptions, chain: Chain) -> None:
    """The oracle writes the whole solution in one chat request within the token budget; its steps go in the chain."""
    lap = stopwatch()
    result = await ctx.chat(shared_prefix(record), model=model, max_tokens=opts.max_tokens)
    count(chain.oracle, result)
    chain.steps = [Step(text, "oracle", None, 1, 0) for text in split_steps(result.text, opts.delimiter)]
    if chain.steps:  # one request wrote every step: its tokens are counted once, on the last
        chain.steps[-1].tokens = result.usage.completion_tokens
    answer = final_answer(record.domain, result.text)
    chain.stopped = "answer" if answer is not None else ("max_tokens" if result.finish_reasons[:1] == ["length"]
                                                          else "end")
    chain.rounds.append(Round(0, [], [], 0, True, oracle_s=round(lap(), 4)))


def judge(speculation: TokenSpeculation, ctx: StageContext) -> TokenSpeculation:
    """The drafter for later calls after this record's own calls: kept unless they accepted too little of it."""
    served = ctx.served
    if speculation.method == "none" or not served.drafted_tokens or served.drafted_tokens < MIN_DRAFTED:
        return speculation
    rate = (served.accepted_tokens or 0) / served.drafted_tokens
    speculation.measured_acceptance = round(rate, 4)
    if rate < MIN_ACCEPTANCE:
        why = (f"this record's own calls accepted {rate:.0%} of {served.drafted_tokens} tokens "
               f"{speculation.method} drafted (needs {MIN_ACCEPTANCE:.0%})")
        return TokenSpeculation("none", reason=why, measured_acceptance=round(rate, 4))
    return speculation


def section(record: TaskRecord, chain: Chain, models: tuple[str, str], mode: Scoring, opts: ReasoningOptions,
            wall_s: float, criterion: Criterion = "rating", threshold: float | None = None) -> Reasoning:
    """The `reasoning` section of a finished chain."""
    scored = [s.score for s in chain.steps if s.score is not None]
    if criterion == "logprob":  # a mean token log-probability: its exponential is a per-token probability
        confidence = round(math.exp(sum(scored) / len(scored)), 4) if scored else None
    else:
        confidence = round(sum(scored) / len(scored) / 9.0, 4) if scored else None
    phases = {phase: round(sum(getattr(r, f"{phase}_s") for r in chain.rounds), 4)
              for phase in ("draft", "verify", "oracle")}
    return Reasoning(
        answer=extract_answer(record.domain, join_steps(chain.texts(), opts.delimiter)),
        chain=chain.steps,
        rounds=len(chain.rounds),
        drafted_steps=chain.drafted,
        accepted_steps=chain.accepted,
        acceptance_rate=round(chain.accepted / chain.drafted, 4) if chain.drafted else None,
        draft_model=models[0],
        oracle_model=models[1],
        confidence=confidence,
        scoring=mode,
        k=opts.k,
        threshold=opts.threshold if threshold is None else threshold,
        criterion=criterion,
        stopped=chain.stopped or "end",
        verify_requests=chain.verify_requests,
        draft_tokens=chain.draft,
        oracle_tokens=chain.oracle,
        wall_s=round(wall_s, 4),
        time_s=phases,
        round_log=chain.rounds,
    )


def baseline(record: TaskRecord, ctx: StageContext) -> None:
    """The component disabled: no chain and no speculation for the record's calls."""
    record.reasoning = {"speculation": TokenSpeculation("none", reason="spec-reasoner is disabled").to_dict()}


def reason_stream(options: ReasoningOptions = ReasoningOptions(), **kwargs) -> int:
    """`spec-reasoner reason`: records in, records with `reasoning` out (only its speculation part when disabled);
    the exit code."""
    return run_stage(STAGE, Reasoner(options).process, component=STAGE, baseline=baseline, **kwargs)
