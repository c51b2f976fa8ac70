"""`tiered-kv-cache bench`: prefill and time to first token saved by prefix reuse on the embedded engine.

Eight agents answer one record: each prompt is the record's shared prefix (system prompt and task) followed by the
agent's own instructions, as the orchestrator sends them. With reuse off every agent prefills the whole prompt; with
it on, the first agent's blocks serve the others. Then the same across two engine processes: the first computes a
prompt and is stopped (its cached blocks move to the disk tier), a second one serves the same prompt from disk. Each
engine is a real `mimo-engine serve`, started by `mimo_core` in a private cache folder that shares the model files;
the figures are the engine's own (`mimo` report: prefilled and cached tokens, time to first token). The agents run
one after another, so no time to first token includes waiting for another agent.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mimo_core import daemon
from mimo_core.client import Completion, LLMClient
from mimo_core.contract import Contract
from mimo_core.prompts import build_messages
from mimo_core.record import TaskRecord
from mimo_core.settings import Settings, load_settings

TASK = (
    "Write a Python function `merge_intervals(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]` that takes "
    "a list of closed integer intervals, in any order and possibly overlapping or touching, and returns the smallest "
    "list of disjoint intervals covering exactly the same integers, sorted by their start. Two intervals that touch, "
    "such as (1, 3) and (4, 6), cover consecutive integers and must be merged into (1, 6). An interval (a, b) with "
    "a > b is invalid: raise ValueError naming it. The input may be empty, may contain duplicates, and may be very "
    "long, so the function must run in O(n log n) time and must not modify its argument. Examples: "
    "merge_intervals([(5, 8), (1, 3), (2, 4)]) == [(1, 4), (5, 8)]; merge_intervals([(1, 3), (4, 6)]) == [(1, 6)]; "
    "merge_intervals([]) == []."
)
AGENT_INSTRUCTIONS = (
    "Solve it directly and briefly.",
    "Think step by step before you write the code.",
    "First list the edge cases, then write the code.",
    "Write the simplest correct solution you can.",
    "Solve it as an expert would, then double-check it.",
    "Write tests first, then the function.",
    "Consider an alternative approach before choosing one.",
    "Explain the invariant your loop keeps, then write it.",
)
WARMUP = [{"role": "user", "content": "Say hello."}]
WARMUP_TOKENS = 4  # a prefill and decode steps: a fresh process loads its compiled kernels before any figure counts


@dataclass
class AgentRun(Contract):
    """One agent's request: prompt tokens, those served from cache (from disk among them) and those prefilled, and
    time to first token. A figure the engine did not report is None and named in `not_reported`, never 0."""

    prompt_tokens: int | None
    cached_tokens: int | None
    prefilled_tokens: int | None
    ttft_s: float | None
    disk_hit_tokens: int | None = None
    not_reported: list[str] = field(default_factory=list)


@dataclass
class DiskRun(Contract):
    """The same prompt in a second engine process: cold (reuse off) and served from the first one's disk blocks;
    `not_reported` says, per missing figure, why it is missing."""

    prompt_tokens: int | None
    disk_hit_tokens: int | None
    cold_ttft_s: float | None
    disk_ttft_s: float | None
    ttft_drop: float | None  # 1 - disk / cold
    not_reported: dict[str, str] = field(default_factory=dict)


@dataclass
class KVBench(Contract):
    """Reuse on vs off for `agents` agents sharing one record's prefix (medians over `repeats`), and across two
    engine processes through the disk tier; `not_reported` says, per missing figure, why it is missing."""

    SCHEMA = "mimo.kv-bench/1"

    model: str
    agents: int
    repeats: int
    shared_tokens: int | None  # prompt tokens every agent's prompt shares
    shareable_tokens: int | None  # of those, in full blocks (only full blocks are cached)
    off: list[AgentRun]
    on: list[AgentRun]
    prefill_saved: float | None  # of the shared prefix's prefill over all agents (off: agents x shared)
    ttft_drop_later_agents: float | None  # 1 - median ttft on / off, agents 2..N
    disk: DiskRun
    not_reported: dict[str, str] = field(default_factory=dict)


@contextmanager
def private_engine(model: str) -> Iterator[Settings]:
    """Settings for an embedded engine in a temporary cache folder that shares the real cache's model files; the
    engine is stopped when the block ends."""
    models = load_settings().cache_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kv-bench-") as folder:
        (Path(folder) / "models").symlink_to(models)
        settings = load_settings(overrides={"cache_dir": folder, "model": model, "draft_model": model,
                                            "engine_idle_timeout_s": 600.0}, env={}, dotenv_path=None)
        try:
            yield settings
        finally:
            daemon.stop_engine(settings)


def agent_messages(nonce: str, agent: int) -> list[dict[str, Any]]:
    """Agent `agent`'s prompt about the record named `nonce` (a new name: a prefix no engine has seen)."""
    record = TaskRecord(id=nonce, domain="coding", task=f"[{nonce}] {TASK}")
    return build_messages(record, {"role": "user", "content": AGENT_INSTRUCTIONS[agent % len(AGENT_INSTRUCTIONS)]})


# AgentRun's figures and where the engine's `mimo` report has each one
REPORTED = {"cached_tokens": ("cache", "cached_tokens"), "prefilled_tokens": ("cache", "prefilled_tokens"),
            "ttft_s": (None, "time_to_first_token_s"), "disk_hit_tokens": ("cache", "disk_hit_tokens")}


def agent_run(done: Completion) -> AgentRun:
    """The figures of one response as its server reported them; a figure it left out is None and named."""
    report = done.engine or {}
    figures: dict[str, Any] = {}
    for name, (section, key) in REPORTED.items():
        value = (report.get(section) or {}) if section else report
        figures[name] = value.get(key)
    # usage without prompt tokens reads as 0 (mimo_core's Usage); no chat prompt has 0 tokens, so 0 means unreported
    figures["prompt_tokens"] = done.usage.prompt_tokens or None
    missing = [name for name in ("prompt_tokens", *REPORTED) if figures[name] is None]
    return AgentRun(**figures, not_reported=missing)


async def ask(client: LLMClient, messages: list[dict[str, Any]], reuse: bool, max_tokens: int = 1) -> AgentRun:
    """One request (for one token: time to first token is all it measures); the engine's figures for it."""
    done = await client.chat(messages, max_tokens=max_tokens, temperature=0.0, mimo={"cache": {"enabled": reuse}})
    return agent_run(done)


async def agents_round(client: LLMClient, agents: int, reuse: bool) -> list[AgentRun]:
    """Every agent of a fresh record, one after another."""
    nonce = secrets.token_hex(4)
    return [await ask(client, agent_messages(nonce, a), reuse) for a in range(agents)]


FIGURES = ("prompt_tokens", "cached_tokens", "prefilled_tokens", "ttft_s", "disk_hit_tokens")


def median_runs(rounds: list[list[AgentRun]]) -> list[AgentRun]:
    """Per agent, the median of each figure over the rounds; a figure missing from any round has no median."""
    def median(runs: tuple[AgentRun, ...], name: str) -> float | None:
        values = [getattr(r, name) for r in runs]
        return None if None in values else statistics.median(values)

    out = []
    for runs in zip(*rounds):
        medians = {name: median(runs, name) for name in FIGURES}
        out.append(AgentRun(**{name: None if value is None else round(value, 6) if name == "ttft_s" else int(value)
                               for name, value in medians.items()},
                            not_reported=[name for name, value in medians.items() if value is None]))
    return out


def ratio_drop(part: float | None, whole: float | None) -> float | None:
    """1 - part / whole, rounded; None when either is missing or `whole` is 0 (no ratio to take)."""
    return None if part is None or not whole else round(1 - part / whole, 4)


def shared_tokens(settings: Settings, agents: int) -> int | None:
    """Prompt tokens every agent's prompt shares, counted with the engine's tokenizer through echo scoring; None
    when the engine gives no prompt tokens back."""
    async def tokens(messages: list[dict[str, Any]]) -> list[str]:
        client = LLMClient(settings)
        try:
            text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
            scored = await client.complete(text, max_tokens=0, echo=True, logprobs=0)
            return [t.token for t in (scored.logprobs or [[]])[0]]
        finally:
            await client.close()

    prompts = [asyncio.run(tokens(agent_messages("shared", a))) for a in range(agents)]
    if not all(prompts):
        return None
    common = 0
    while all(len(p) > common and p[common] == prompts[0][common] for p in prompts):
        common += 1
    return common


async def disk_runs(settings: Settings) -> DiskRun:
    """A prompt computed by one engine process is served from disk by the next."""
    nonce, cold_nonce = secrets.token_hex(4), secrets.token_hex(4)
    client = LLMClient(settings)
    await ask(client, WARMUP, True, WARMUP_TOKENS)
    await ask(client, agent_messages(nonce, 0), True)
    await client.close()
    await asyncio.to_thread(daemon.stop_engine, settings)  # SIGTERM: cached blocks move down to disk
    client = LLMClient(settings)
    await agents_round(client, 2, reuse=True)  # the new process's first passes (cold and reusing), before any figure
    served = await ask(client, agent_messages(nonce, 0), True)
    cold = await ask(client, agent_messages(cold_nonce, 0), False)
    await client.close()
    return disk_run(served, cold)


def disk_run(served: AgentRun, cold: AgentRun) -> DiskRun:
    """The disk tier's figures from the prompt served from disk and a cold one of the same length."""
    missing = {f"served.{name}": "the engine did not report it" for name in served.not_reported}
    missing |= {f"cold.{name}": "the engine did not report it" for name in cold.not_reported}
    drop = ratio_drop(served.ttft_s, cold.ttft_s)
    if drop is None:
        missing["ttft_drop"] = ("needs both times to first token, and a cold one above 0 "
                                f"(served {served.ttft_s}, cold {cold.ttft_s})")
    return DiskRun(served.prompt_tokens, served.disk_hit_tokens, cold.ttft_s, served.ttft_s, drop, missing)


def run_bench(model: str, agents: int = 8, repeats: int = 3) -> KVBench:
    """Measure reuse on vs off for `agents` agents (medians over `repeats` fresh records), then the disk tier across
    two engine processes."""
    with private_engine(model) as settings:
        async def rounds() -> tuple[list[list[AgentRun]], list[list[AgentRun]]]:
            client = LLMClient(settings)
            try:
                await ask(client, WARMUP, True, WARMUP_TOKENS)
                off, on = [], []
                for _ in range(repeats):  # interleaved, so that drift in the machine's load hits both alike
                    off.append(await agents_round(client, agents, reuse=False))
                    on.append(await agents_round(client, agents, reuse=True))
                return off, on
            finally:
                await client.close()

        off_rounds, on_rounds = asyncio.run(rounds())
        shared = shared_tokens(settings, agents)
        disk = asyncio.run(disk_runs(settings))
    return summarize(model, agents, repeats, shared, off_rounds, on_rounds, disk)


def summarize(model: str, agents: int, repeats: int, shared: int | None, off_rounds: list[list[AgentRun]],
              on_rounds: list[list[AgentRun]], disk: DiskRun) -> KVBench:
    """The bench's figures from its rounds: medians per agent, the prefill saved and the time to first token
    dropped; a figure that needs one the engine did not report is None, with the reason in `not_reported`."""
    off, on = median_runs(off_rounds), median_runs(on_rounds)
    missing: dict[str, str] = {}
    for setting, runs in (("off", off), ("on", on)):
        for name in FIGURES:
            lacking = [str(agent) for agent, run in enumerate(runs, start=1) if name in run.not_reported]
            if lacking:
                missing[f"{setting}.{name}"] = f"not reported in every round for agents {', '.join(lacking)}"
    if shared is None:
        missing["shared_tokens"] = "the engine gave no prompt tokens back when asked to echo the prompts"
    cached = [r.cached_tokens for r in on]
    saved = None if None in cached or not shared else round(sum(cached) / (agents * shared), 4)
    if saved is None:
        missing["prefill_saved"] = "needs the shared tokens and every agent's cached tokens with reuse on"
    later_off, later_on = [r.ttft_s for r in off[1:]], [r.ttft_s for r in on[1:]]
    drop = None
    if None not in later_off and None not in later_on:
        drop = ratio_drop(statistics.median(later_on), statistics.median(later_off))
    if drop is None:
        missing["ttft_drop_later_agents"] = "needs the time to first token of agents 2..N, on and off, above 0"
    missing |= {f"disk.{name}": why for name, why in disk.not_reported.items()}
    shareable = None if shared is None else shared // 16 * 16
    return KVBench(model, agents, repeats, shared, shareable, off, on, saved, drop, disk, missing)
