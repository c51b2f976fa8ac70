"""Synthetic request traces for sizing the cache: agents sharing a record's prefix over several turns, plus scans.

A record's prompts all start with its domain's system prompt and its task (the shared prefix the plan stage warms);
each agent adds its own instructions, and each later turn adds the agent's previous answer and a follow-up, so turn
t's prompt extends turn t-1's. Several records are in flight at once and their agents' turns interleave, which is
what makes a small hbm thrash. Every `scan_every`-th request is a long one-off prompt (a document read once), the
traffic that scan-resistant policies are meant to shrug off.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AgentWorkload:
    """The shape of a multi-agent, multi-turn trace (token counts per part)."""

    records: int = 200
    agents: int = 8
    turns: int = 3
    concurrent: int = 4  # records in flight at once
    domains: int = 4
    system_tokens: int = 200
    task_tokens: int = 100
    instruction_tokens: int = 40
    answer_tokens: int = 80
    followup_tokens: int = 20
    scan_every: int = 10  # 0: no scans
    scan_tokens: int = 1500
    vocab: int = 32000
    seed: int = 0


def agent_trace(w: AgentWorkload) -> Iterator[dict]:
    """The trace's requests, `{"id": ..., "tokens": [...]}` each, in arrival order."""
    rng = np.random.default_rng(w.seed)

    def text(n: int) -> list[int]:
        return rng.integers(0, w.vocab, n).tolist()

    systems = [text(w.system_tokens) for _ in range(w.domains)]
    instructions = [text(w.instruction_tokens) for _ in range(w.agents)]  # one strategy per agent, every record
    waiting = iter(range(w.records))
    active: dict[int, list[list[int]]] = {}  # record -> each agent's conversation so far
    turns: dict[int, list[int]] = {}  # record -> turns each agent has taken
    sent = 0

    def open_record() -> None:
        record = next(waiting, None)
        if record is not None:
            prefix = systems[record % w.domains] + text(w.task_tokens)
            active[record] = [prefix + instructions[a] for a in range(w.agents)]
            turns[record] = [0] * w.agents

    for _ in range(w.concurrent):
        open_record()
    while active:
        if w.scan_every > 1 and sent % w.scan_every == w.scan_every - 1:
            yield {"id": f"scan-{sent}", "tokens": text(w.scan_tokens)}
            sent += 1
            continue
        record = int(rng.choice(sorted(active)))
        agent = int(rng.choice([a for a in range(w.agents) if turns[record][a] < w.turns]))
        yield {"id": f"r{record}-a{agent}-t{turns[record][agent]}", "tokens": list(active[record][agent])}
        sent += 1
        active[record][agent] += text(w.answer_tokens) + text(w.followup_tokens)  # the answer, then the next ask
        turns[record][agent] += 1
        if all(t == w.turns for t in turns[record]):
            del active[record], turns[record]
            open_record()
