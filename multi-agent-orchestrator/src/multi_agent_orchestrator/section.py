"""The `consensus` section this stage writes into every record, as a contract."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mimo_core.contract import Contract

TraceStatus = Literal["done", "stopped", "cancelled", "failed"]


@dataclass
class AgentVote(Contract):
    """One voter: an agent, a branch forked from one, or the spec-reasoner's verified answer.

    `confidence` is the trace's confidence measure (from its token logprobs), `certainty` the probability it puts on
    its own answer (the geometric-mean probability of its last tokens), `weight` its weight in the vote. `status`:
    done; stopped (its group confidence fell below the record's threshold, so it does not vote); cancelled (the
    vote was decided while it ran); failed (its request failed; `error` says why)."""

    index: int
    strategy: str
    temperature: float
    seed: int | None
    answer: str | None
    key: str | None
    confidence: float | None
    certainty: float
    weight: float
    tokens: int
    status: TraceStatus
    forked_from: int | None = None
    fork_token: int | None = None  # the position in the parent's reply where the branch took over
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None  # prompt tokens the backend served from its prefix cache, where it says
    error: str | None = None
    wall_s: float | None = None  # seconds from the record's start to the end of this voter's trace


@dataclass
class Consensus(Contract):
    """The stage's section: the answer, how sure the vote is, and every voter."""

    answer: str | None
    confidence: float | None  # the winner's share of the weight, doubt included; None: nothing to measure it by
    n_agents: int
    votes: dict[str, float]
    agents: list[AgentVote]
    stopped_early: bool
    weighting: Literal["unweighted", "cisc", "deepconf"]
    measure: str
    keys: Literal["value", "behaviour", "text"]  # how answers were compared
    tokens: int  # completion tokens of all voters
    stop_reason: str | None = None
    threshold: float | None = None  # the group confidence below which a trace was stopped
    notes: list[str] = field(default_factory=list)
