"""The `reasoning` section spec-reasoner writes into a record, as a contract."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mimo_core.contract import Contract

Author = Literal["draft", "oracle"]
Scoring = Literal["completions", "chat", "unavailable"]
Criterion = Literal["rating", "logprob"]
Stopped = Literal["answer", "end", "max_steps", "max_tokens"]


@dataclass
class Step(Contract):
    """One step of the chain: its text, who wrote it, and the oracle's score (None for the oracle's own steps)."""

    text: str
    author: Author
    score: float | None = None
    round: int = 0
    tokens: int = 0  # completion tokens its author spent on it, in the author's tokenizer


@dataclass
class Round(Contract):
    """One draft-verify round: the drafted steps' scores, how many were accepted, and where its time went."""

    drafted: int
    scores: list[float | None]
    masses: list[float]  # the probability the oracle put on a digit when scoring each step
    accepted: int
    oracle_step: bool  # the oracle wrote the step after the accepted ones
    draft_s: float = 0.0
    verify_s: float = 0.0
    oracle_s: float = 0.0


@dataclass
class Tokens(Contract):
    """Tokens one model read and wrote for the record; `cached`: prompt tokens the endpoint served from its prefix
    cache instead of computing them (as far as it reports them)."""

    prompt: int = 0
    completion: int = 0
    cached: int = 0


@dataclass
class TokenSpeculation(Contract):
    """`reasoning.speculation`: the block drafter the record's model calls run with (the plan's speculation part),
    and why; `settable` is false where the backend takes no speculation per request."""

    method: str
    block: int | None = None
    reason: str = ""
    settable: bool = True
    measured_acceptance: float | None = None  # accepted / drafted over this stage's own calls, where they drafted


@dataclass
class StepDrafting(Contract):
    """`reasoning.step_drafting`: whether the chain was drafted step by step, by which criterion, and why; with the
    calibration's figures behind an automatic decision (`calibration.py`)."""

    used: bool
    criterion: Criterion | None = None
    threshold: float | None = None
    reason: str = ""
    discrimination: dict[str, float] = field(default_factory=dict)
    ms_per_token: dict[str, float | None] = field(default_factory=dict)


@dataclass
class Reasoning(Contract):
    """The record's `reasoning`: the answer, the chain with each step's author and score, and what it cost.

    `acceptance_rate` is accepted / drafted steps (None when nothing was drafted); `confidence` is the mean score
    of the scored steps kept in the chain, divided by 9 (None when none was scored). `scoring` says how steps were
    verified: one batched completions request per round, one chat request per step, or not at all (the endpoint
    returns no logprobs, and the oracle reasoned alone)."""

    answer: str | None
    chain: list[Step]
    rounds: int
    drafted_steps: int
    accepted_steps: int
    acceptance_rate: float | None
    draft_model: str
    oracle_model: str
    confidence: float | None
    scoring: Scoring
    k: int
    threshold: float
    stopped: Stopped
    criterion: Criterion = "rating"  # the 0-9 rating, or the oracle's mean token log-probability of the step
    notes: list[str] = field(default_factory=list)  # what was done differently for this backend
    speculation: TokenSpeculation | None = None  # the block drafter of the record's calls
    step_drafting: StepDrafting | None = None  # why the chain was drafted (absent: the bench's forced arms)
    verify_requests: int = 0
    draft_tokens: Tokens = field(default_factory=Tokens)
    oracle_tokens: Tokens = field(default_factory=Tokens)
    wall_s: float = 0.0
    time_s: dict[str, float] = field(default_factory=dict)  # draft, verify, oracle
    round_log: list[Round] = field(default_factory=list)
