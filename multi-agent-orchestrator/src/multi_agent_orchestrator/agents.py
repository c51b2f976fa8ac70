"""Who the agents are: a strategy, a temperature and a seed each, and the messages each one sends.

Every agent's messages start with the record's shared prefix (system prompt + task), so that on an engine with
prefix reuse the agents of a record prefill it once; an agent's own instruction comes after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mimo_core.prompts import build_messages
from mimo_core.record import TaskRecord

STRATEGIES = ("step-by-step", "direct", "critic")
TEMPERATURES = (0.7, 1.0, 0.5)  # cycled over the agents after the first
DIRECT = "Reply with the final answer only, in the required final-line form, without any reasoning."
CRITIC = (
    "A colleague proposed this solution:\n\n{chain}\n\nCheck it step by step. Where a step is wrong, correct it and "
    "carry on from the corrected step. End in the required final-line form."
)
CONTINUE = "Continue your reply from exactly where it stops. Do not repeat what is already written."


@dataclass(frozen=True)
class Agent:
    """One voter: how it is asked (strategy), how it samples (temperature, seed)."""

    index: int
    strategy: str
    temperature: float
    seed: int


def proposal(record: TaskRecord) -> str | None:
    """The spec-reasoner's chain as text, when the record has one (what the critic checks)."""
    chain = record.reasoning.get("chain") if isinstance(record.reasoning, dict) else None
    if not isinstance(chain, list) or not chain:
        return None
    steps = [step.get("text") if isinstance(step, dict) else step for step in chain]
    text = "\n".join(str(step) for step in steps if step)
    return text or None


def plan(record: TaskRecord, n: int, seed: int) -> list[Agent]:
    """`n` agents, diverse in strategy, temperature and seed.

    The first reasons step by step at temperature 0 (the one agent of the baseline). Of the others, two in three
    reason at a sampling temperature and one answers directly; with a spec-reasoner chain in the record, the
    second agent is a critic of it."""
    strategies = ["step-by-step"]
    rest = ["step-by-step", "direct", "step-by-step"]
    if proposal(record) is not None:
        rest = ["critic", *rest]
    strategies += [rest[i % len(rest)] for i in range(n - 1)]
    temperatures = [0.0] + [TEMPERATURES[i % len(TEMPERATURES)] for i in range(n - 1)]
    return [Agent(i, s, t, seed * 1000 + i) for i, (s, t) in enumerate(zip(strategies, temperatures))]


def messages(record: TaskRecord, agent: Agent) -> list[dict[str, Any]]:
    """The chat messages of an agent: the shared prefix, then its strategy's instruction if it has one."""
    if agent.strategy == "direct":
        return build_messages(record, {"role": "user", "content": DIRECT})
    if agent.strategy == "critic":
        return build_messages(record, {"role": "user", "content": CRITIC.format(chain=proposal(record))})
    return build_messages(record)


def fork_messages(parent: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """A branch's messages: the parent's, its reply up to the fork point, and a request to go on from there.

    The parent's tokens up to the fork point come first, unchanged, so that an engine with prefix reuse serves them
    from cache. (Servers that can continue a final assistant message would not need the last turn; the OpenAI API
    has no standard way to ask for that.)"""
    return [*parent, {"role": "assistant", "content": prefix}, {"role": "user", "content": CONTINUE}]
