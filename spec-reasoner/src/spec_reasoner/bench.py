"""`bench`: speculative reasoning against the oracle alone, over ds-benchmark's suites, thresholds swept.

Each record runs every arm back to back (oracle-only, then one speculative arm per threshold, the order rotated
from record to record), one run at a time, so that load on the machine falls on all arms alike. Every finished run
is appended to a JSONL file at once, so an interrupted bench keeps its runs and `--resume` goes on from them.
Answers are checked by `ds-benchmark score` (a subprocess: tools meet only through JSON and the CLI)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from mimo_core.client import LLMClient
from mimo_core.contract import Contract
from mimo_core.provenance import provenance
from mimo_core.record import TaskRecord, read_records
from mimo_core.runs import RunsFile
from mimo_core.settings import Settings
from mimo_core.stage import StageContext
from mimo_core.stats import bootstrap_interval
from mimo_core.tools import run_tool

from . import backend
from .reasoner import ReasoningOptions, Reasoner

ORACLE_ONLY = "oracle-only"


@dataclass
class Run(Contract):
    """One record through one arm of one pairing."""

    pairing: str  # "draft->oracle"
    arm: str  # "oracle-only" or "spec@T"
    id: str | int
    domain: str
    difficulty: float
    answer: str | None
    confidence: float | None
    wall_s: float
    draft_tokens: int  # completion tokens
    oracle_tokens: int
    prompt_tokens: int  # of both models
    drafted: int
    accepted: int
    time_s: dict[str, float]
    error: str | None = None
    cached_tokens: int = 0  # prompt tokens served from the engine's prefix cache


@dataclass
class Arm(Contract):
    """One arm's figures over the records it ran, against oracle-only on the same records (95% bootstrap CIs)."""

    pairing: str
    arm: str
    n: int
    accuracy: float
    accuracy_ci95: list[float]
    accuracy_delta: float  # minus oracle-only's, paired by record
    accuracy_delta_ci95: list[float]
    wall_s: float  # sum over records
    wall_s_mean: float
    speedup: float  # oracle-only's wall time / this arm's, over the same records
    speedup_ci95: list[float]
    draft_tokens: int
    oracle_tokens: int
    prompt_tokens: int
    cached_tokens: int
    acceptance_rate: float | None
    time_s: dict[str, float]  # draft, verify, oracle summed over records
    errors: int


@dataclass
class Bench(Contract):
    """The bench's results: its configuration, each arm's figures, and whether the goal was met per pairing."""

    SCHEMA = "mimo.spec-bench/1"

    config: dict[str, Any]
    arms: list[Arm]
    goal: dict[str, bool]  # pairing -> some arm is faster (CI above 1) at no worse accuracy (delta CI reaches 0)
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """What to run: pairings (draft, oracle), thresholds, the loop's options, where runs are kept."""

    pairings: list[tuple[str, str]]
    thresholds: list[float]
    options: ReasoningOptions
    runs_path: Path
    resume: bool = False


def suite(n: int, domains: list[str], seed: int) -> list[TaskRecord]:
    """ds-benchmark's suite of n records over the domains."""
    out = run_tool("ds-benchmark", "suite", "--n", str(n), "--domains", *domains, "--seed", str(seed))
    return list(read_records(out.splitlines()))


def arms(thresholds: list[float]) -> list[str]:
    """The arm names: oracle-only, then spec@T per threshold."""
    return [ORACLE_ONLY, *(f"spec@{t:g}" for t in thresholds)]


def runs_file(path: Path) -> RunsFile[Run]:
    """The bench's runs file: one run per pairing, arm and record."""
    return RunsFile(path, lambda line, n: Run.from_json(line, f"{path}:{n}"), key=lambda r: (r.pairing, r.arm, r.id))


async def run_one(reasoner: Reasoner, record: TaskRecord, ctx: StageContext, pairing: str, arm: str) -> Run:
    """One record through one arm; a failure is the run's error, not the bench's."""
    try:
        reasoning = await reasoner.reason(record, ctx, alone=arm == ORACLE_ONLY)
    except Exception as exc:  # noqa: BLE001 - one failed run is reported with the others
        return Run(pairing, arm, record.id, record.domain, record.difficulty, None, None, 0.0, 0, 0, 0, 0, 0, {},
                   f"{type(exc).__name__}: {exc}")
    return Run(pairing, arm, record.id, record.domain, record.difficulty, reasoning.answer, reasoning.confidence,
               reasoning.wall_s, reasoning.draft_tokens.completion, reasoning.oracle_tokens.completion,
               reasoning.draft_tokens.prompt + reasoning.oracle_tokens.prompt, reasoning.drafted_steps,
               reasoning.accepted_steps, reasoning.time_s,
               cached_tokens=reasoning.draft_tokens.cached + reasoning.oracle_tokens.cached)


async def warm_up(ctx: StageContext, capabilities: backend.Capabilities) -> None:
    """Probe the oracle's scoring and load both models before any run is timed."""
    await capabilities.scoring(ctx, ctx.settings.oracle_model)
    await ctx.chat([{"role": "user", "content": "Hi"}], model=ctx.settings.drafter_model, max_tokens=1)


async def run_all(records: list[TaskRecord], plan: Plan, settings: Settings,
                  on_run: Callable[[Run], None] = lambda run: None) -> list[Run]:
    """Every (pairing, record, arm) not yet in the runs file, one at a time; returns all runs, kept ones included."""
    kept = runs_file(plan.runs_path)
    runs = kept.start(plan.resume)
    done = {(r.pairing, r.arm, r.id) for r in runs}
    names = arms(plan.thresholds)
    for draft, oracle in plan.pairings:
        pairing = f"{draft}->{oracle}"
        # A client per pairing: the embedded engine is started to serve that pairing's two models.
        pair_settings = replace(settings, draft_model=draft, model=oracle)
        client = LLMClient(pair_settings)
        capabilities = backend.Capabilities()
        try:
            await warm_up(StageContext(pair_settings, lambda: client), capabilities)
            for i, record in enumerate(records):
                for arm in names[i % len(names):] + names[: i % len(names)]:
                    if (pairing, arm, record.id) in done:
                        continue
                    threshold = plan.options.threshold if arm == ORACLE_ONLY else float(arm.split("@")[1])
                    reasoner = Reasoner(replace(plan.options, threshold=threshold), capabilities)
                    ctx = StageContext(pair_settings, lambda: client)
                    run = await run_one(reasoner, record, ctx, pairing, arm)
                    kept.append(run)
                    runs.append(run)
                    on_run(run)
        finally:
            await client.close()
    return runs


def verdicts(records: list[TaskRecord], runs: list[Run]) -> list[bool]:
    """Whether each run's answer is right, checked by `ds-benchmark score` against the record's reference."""
    by_id = {r.id: r for r in records}
    lines = []
    for i, run in enumerate(runs):
        record = by_id[run.id]
        scored = TaskRecord(id=f"run-{i}", domain=record.domain, task=record.task, difficulty=record.difficulty,
                            reference=record.reference, consensus={"answer": run.answer, "confidence": run.confidence})
        lines.append(json.dumps(scored.to_dict()))
    out = run_tool("ds-benchmark", "score", stdin="\n".join(lines) + "\n") if lines else ""
    return [bool(r.verdict.get("correct")) for r in read_records(out.splitlines())]


def interval(values: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray]) -> list[float]:
    """The 95% bootstrap interval of `statistic` over resampled rows of `values` (n x columns), to 4 digits."""
    return bootstrap_interval(values, statistic, digits=4) or []


def arm_figures(pairing: str, arm: str, runs: list[Run], correct: list[bool], base: dict[Any, tuple[Run, bool]]
                ) -> Arm:
    """An arm's figures; the paired ones use the records that oracle-only also ran."""
    pairs = [(run, ok, *base[run.id]) for run, ok in zip(runs, correct) if run.id in base]
    # columns: correct, wall, oracle-only correct, oracle-only wall
    table = np.array([[ok, run.wall_s, b_ok, b_run.wall_s] for run, ok, b_run, b_ok in pairs], dtype=float)
    table = table.reshape(-1, 4)
    drafted = sum(r.drafted for r in runs)
    phases = {p: round(sum(r.time_s.get(p, 0.0) for r in runs), 3) for p in ("draft", "verify", "oracle")}
    wall = float(table[:, 1].sum())
    return Arm(
        pairing=pairing, arm=arm, n=len(runs),
        accuracy=round(float(np.mean(correct)), 4),
        accuracy_ci95=interval(np.array(correct, dtype=float).reshape(-1, 1), lambda t: t[..., 0].mean(-1)),
        accuracy_delta=round(float((table[:, 0] - table[:, 2]).mean()), 4),
        accuracy_delta_ci95=interval(table, lambda t: (t[..., 0] - t[..., 2]).mean(-1)),
        wall_s=round(sum(r.wall_s for r in runs), 3),
        wall_s_mean=round(sum(r.wall_s for r in runs) / len(runs), 3),
        speedup=round(float(table[:, 3].sum()) / wall, 4) if wall > 0 else 0.0,
        speedup_ci95=interval(table, lambda t: t[..., 3].sum(-1) / np.maximum(t[..., 1].sum(-1), 1e-9)),
        draft_tokens=sum(r.draft_tokens for r in runs),
        oracle_tokens=sum(r.oracle_tokens for r in runs),
        prompt_tokens=sum(r.prompt_tokens for r in runs),
        cached_tokens=sum(r.cached_tokens for r in runs),
        acceptance_rate=round(sum(r.accepted for r in runs) / drafted, 4) if drafted else None,
        time_s=phases,
        errors=sum(r.error is not None for r in runs),
    )


def summarise(records: list[TaskRecord], runs: list[Run], plan: Plan, config: dict[str, Any],
              settings: Settings) -> Bench:
    """Score every run and gather each arm's figures; the goal per pairing."""
    correct = verdicts(records, runs)
    results: list[Arm] = []
    for draft, oracle in plan.pairings:
        pairing = f"{draft}->{oracle}"
        mine = [(r, ok) for r, ok in zip(runs, correct) if r.pairing == pairing]
        base = {r.id: (r, ok) for r, ok in mine if r.arm == ORACLE_ONLY}
        for arm in arms(plan.thresholds):
            chosen = [(r, ok) for r, ok in mine if r.arm == arm]
            if chosen and base:
                results.append(arm_figures(pairing, arm, [r for r, _ in chosen], [ok for _, ok in chosen], base))
    goal = {f"{d}->{o}": any(a.pairing == f"{d}->{o}" and a.arm != ORACLE_ONLY and a.speedup_ci95[0] > 1.0
                             and a.accuracy_delta_ci95[1] >= 0.0 for a in results) for d, o in plan.pairings}
    models = {m for pair in plan.pairings for m in pair}
    return Bench(config=config, arms=results, goal=goal, provenance=provenance("spec-reasoner", settings, models))
