"""The loop: draft k steps, verify them in one request, keep the accepted prefix, the oracle writes the next step.

Repeated until the chain holds a final answer, a model ends it, or the step or token budget is spent."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mimo_core.answers import extract_answer
from mimo_core.client import Completion
from mimo_core.prompts import shared_prefix
from mimo_core.record import TaskRecord
from mimo_core.stage import StageContext, run_stage

from . import backend
from .scoring import accepted_prefix
from .section import Reasoning, Round, Scoring, Step, Stopped, Tokens
from .steps import DELIMITER, continuation, final_answer, first_step, join_steps, split_steps

STAGE = "spec-reasoner"
MAX_K = 16  # prompts in one scoring request (the engine's batch is 8; more would queue)


@dataclass(frozen=True)
class Options:
    """How the loop runs: steps drafted per round, acceptance threshold, budgets (the models come from settings)."""

    k: int = 3
    threshold: float = 7.0
    max_steps: int = 16
    max_tokens: int = 512  # completion tokens of the chain, drafted and written
    step_tokens: int = 128  # the most tokens of one step
    delimiter: str = DELIMITER

    def __post_init__(self) -> None:
        checks = [
            (1 <= self.k <= MAX_K, f"k must be 1..{MAX_K}, not {self.k}"),
            (0.0 <= self.threshold <= 9.0, f"threshold must be 0..9, not {self.threshold}"),
            (self.max_steps >= 1, f"max_steps must be at least 1, not {self.max_steps}"),
            (self.max_tokens >= 1, f"max_tokens must be at least 1, not {self.max_tokens}"),
            (self.step_tokens >= 1, f"step_tokens must be at least 1, not {self.step_tokens}"),
            (self.delimiter.strip() == "" and self.delimiter != "", "the delimiter must be whitespace, such as \\n\\n"),
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


def keep(chain: Chain, step: Step, domain: str, options: Options) -> bool:
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
    """The stage's work (`process`): one per process, so the endpoint's scoring support is probed once."""

    def __init__(self, options: Options = Options(), capabilities: backend.Capabilities | None = None) -> None:
        self.options = options
        self.capabilities = capabilities or backend.Capabilities()

    async def process(self, record: TaskRecord, ctx: StageContext) -> None:
        """Write `reasoning` into the record."""
        record.reasoning = (await self.reason(record, ctx)).to_dict()

    async def reason(self, record: TaskRecord, ctx: StageContext, alone: bool = False) -> Reasoning:
        """The speculative chain of one record; the oracle alone where the endpoint cannot score, or if `alone`.

        The models are MIMO_DRAFT_MODEL / MIMO_MODEL (or flags), else the engine's defaults."""
        started = time.perf_counter()
        draft_model, oracle_model = ctx.settings.drafter_model, ctx.settings.oracle_model
        mode = await self.capabilities.scoring(ctx, oracle_model)
        chain = Chain()
        if alone or mode == "unavailable":
            await oracle_alone(record, ctx, oracle_model, self.options, chain)
        else:
            while chain.stopped is None:
                await self.round(record, ctx, mode, (draft_model, oracle_model), chain)
        return section(record, chain, (draft_model, oracle_model), mode, self.options, time.perf_counter() - started)

    async def round(self, record: TaskRecord, ctx: StageContext, mode: Scoring, models: tuple[str, str],
                    chain: Chain) -> None:
        """Draft up to k steps, score them in one request, keep the accepted prefix, let the oracle write one."""
        opts, number = self.options, len(chain.rounds) + 1
        draft_model, oracle_model = models
        lap = stopwatch()
        drafts = await draft_steps(record, ctx, mode, draft_model, chain, opts)
        draft_s = lap()
        verdict = await verify(record, ctx, mode, oracle_model, chain, drafts, opts) if drafts else None
        verify_s = lap()
        scores, masses = (verdict.scores, verdict.masses) if verdict else ([], [])
        accepted = accepted_prefix(scores, opts.threshold)
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
class Draft:
    """A drafted step and the draft model's completion tokens for it."""

    text: str
    tokens: int


async def draft_steps(record: TaskRecord, ctx: StageContext, mode: Scoring, model: str, chain: Chain,
                      opts: Options) -> list[Draft]:
    """Up to k steps from the draft model, one request each (a step ends at the delimiter); fewer if it ends the
    solution, writes a final answer, or would pass the chain's budgets."""
    drafts: list[Draft] = []
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
        drafts.append(Draft(text, result.usage.completion_tokens))
        room_tokens -= result.usage.completion_tokens
        if final_answer(record.domain, join_steps(texts + [d.text for d in drafts], opts.delimiter)):
            break
    return drafts


async def verify(record: TaskRecord, ctx: StageContext, mode: Scoring, model: str, chain: Chain,
                 drafts: list[Draft], opts: Options) -> backend.Scores:
    """The oracle's scores of the drafted steps: prompt i rates step i after the chain and steps 1..i-1."""
    base = chain.texts()
    solutions = [join_steps(base + [d.text for d in drafts[: i + 1]], opts.delimiter) for i in range(len(drafts))]
    verdict = await backend.score(ctx, mode, model, record, solutions)
    for result in verdict.results:
        count(chain.oracle, result)
    chain.verify_requests += len(verdict.results)
    return verdict


async def oracle_step(record: TaskRecord, ctx: StageContext, mode: Scoring, model: str, chain: Chain, number: int,
                      opts: Options) -> None:
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


async def oracle_alone(record: TaskRecord, ctx: StageContext, model: str, opts: Options, chain: Chain) -> None:
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


def section(record: TaskRecord, chain: Chain, models: tuple[str, str], mode: Scoring, opts: Options,
            wall_s: float) -> Reasoning:
    """The `reasoning` section of a finished chain."""
    scored = [s.score for s in chain.steps if s.score is not None]
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
        confidence=round(sum(scored) / len(scored) / 9.0, 4) if scored else None,
        scoring=mode,
        k=opts.k,
        threshold=opts.threshold,
        stopped=chain.stopped or "end",
        verify_requests=chain.verify_requests,
        draft_tokens=chain.draft,
        oracle_tokens=chain.oracle,
        wall_s=round(wall_s, 4),
        time_s=phases,
        round_log=chain.rounds,
    )


def reason_stream(options: Options = Options(), **kwargs) -> int:
    """`spec-reasoner reason`: records in, records with `reasoning` out (none when disabled); the exit code."""
    return run_stage(STAGE, Reasoner(options).process, component=STAGE, baseline=None, **kwargs)
