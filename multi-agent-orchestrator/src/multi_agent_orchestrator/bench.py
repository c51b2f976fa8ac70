"""`multi-agent-orchestrator bench`: accuracy, D/s, tokens and wall time against the number of agents, plain
majority against confidence-weighted votes, with and without early stop, and the calibration of the confidence.

Phase 1 runs every task with each number of agents to the end (no early stop, no forks), the arms interleaved per
task so that a busy machine slows them alike. Every weighting is then applied to the same traces (equal tokens), and
the one with the best D/s at the default number of agents is chosen. Phase 2 runs the early-stop arms live with the
chosen weighting; the same rules are also replayed on the phase-1 traces (see replay.py). Verdicts and D/s come
from `ds-benchmark score` and `ds-benchmark report`, run as commands. Every finished run is appended to a JSONL
file as it ends, so an interrupted bench loses nothing and `--resume` goes on from there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mimo_core.client import LLMClient
from mimo_core.contract import Contract
from mimo_core.provenance import machine, package_version
from mimo_core.record import TaskRecord, TraceEntry, parse_record
from mimo_core.runs import RunsFile
from mimo_core.settings import Settings
from mimo_core.stage import StageContext
from mimo_core.tools import ToolError, run_tool

from .confidence import MEASURES
from .options import Options
from .orchestrate import Orchestration
from .replay import Replayed, Signal, replay
from .stage import STAGE
from .stats import calibration_error, paired_difference, reliability

SCHEMA = "mimo.orchestrator-bench/1"
RUN_SCHEMA = "mimo.orchestrator-run/1"
CISC_TEMPERATURES = (0.25, 0.5, 1.0)
DEEPCONF_KEEP = (0.5, 0.9)
TOKEN_SAVING_GOAL = 0.4


class BenchError(RuntimeError):
    """The bench cannot go on (a tool it calls failed, or its input is unusable); the message is one line."""


# ---------------------------------------------------------------- what runs


@dataclass(frozen=True)
class Arm:
    """One way of running a task: how many agents, early stop or not."""

    agents: int
    early_stop: bool

    @property
    def name(self) -> str:
        """The arm's name in runs and results."""
        return f"{self.agents} agents" + (", early stop" if self.early_stop else "")


@dataclass
class TraceRun(Contract):
    """One trace of a run, with what the analysis needs: its answer key and its tokens' confidences."""

    index: int
    strategy: str
    temperature: float
    status: str
    key: str | None
    answer: str | None
    tokens: int
    wall_s: float | None
    confidences: list[float]
    logprobs: list[float]


@dataclass
class ArmRun(Contract):
    """One task run by one arm: its consensus as the stage wrote it, its time and tokens, its traces."""

    SCHEMA = RUN_SCHEMA

    record_id: str
    arm: str
    agents: int
    early_stop: bool
    options: Options
    wall_s: float
    tokens: int
    prompt_tokens: int
    consensus: dict[str, Any]
    traces: list[TraceRun]


def suite_records(args: list[str]) -> list[TaskRecord]:
    """The task records `ds-benchmark suite ARGS` writes."""
    return [parse_record(line, i) for i, line in enumerate(_ds_benchmark("suite", *args).splitlines(), 1)
            if line.strip()]


def _ds_benchmark(*args: str, stdin: str | None = None) -> str:
    try:
        return run_tool("ds-benchmark", *args, stdin=stdin)
    except ToolError as exc:
        raise BenchError(str(exc)) from None


def arm_options(options: Options, arm: Arm) -> Options:
    """The options an arm runs with: its number of agents and early stop; no forks, so arms compare agents alone."""
    return dataclasses.replace(options, agents=arm.agents, early_stop=arm.early_stop, branches=0)


async def run_arm(record: TaskRecord, arm: Arm, options: Options, settings: Settings, client: LLMClient) -> ArmRun:
    """Run one task with one arm and keep everything the analysis needs."""
    options = arm_options(options, arm)
    ctx = StageContext(settings, lambda: client)
    orchestration = Orchestration(record, ctx, options)
    started = time.monotonic()
    consensus = await orchestration.run()
    wall_s = time.monotonic() - started
    traces = [
        TraceRun(t.index, t.agent.strategy, t.agent.temperature, t.status, t.key, t.answer, t.tokens,
                 None if t.wall_s is None else round(t.wall_s, 3),
                 [round(c, 4) for c in t.confidences], [round(lp, 4) for lp in t.logprobs])
        for t in orchestration.traces
    ]
    return ArmRun(str(record.id), arm.name, arm.agents, arm.early_stop, options, round(wall_s, 3),
                  ctx.served.completion_tokens, ctx.served.prompt_tokens, consensus.to_dict(), traces)


def runs_file(path: Path, wanted: dict[str, Options] | None = None) -> RunsFile[ArmRun]:
    """The bench's runs file: one run per task and arm; a run of an arm in `wanted` made with other options (an
    earlier bench that chose another weighting) is dropped, to be run again."""
    wanted = wanted or {}
    return RunsFile(path, lambda line, n: ArmRun.from_json(line, f"{path}:{n}"), key=lambda r: (r.record_id, r.arm),
                    keep=lambda r: wanted.get(r.arm, r.options) == r.options)


async def collect(records: list[TaskRecord], arms: list[Arm], options: Options, settings: Settings,
                  runs_path: Path, progress: Progress) -> list[ArmRun]:
    """Run every (task, arm) not yet in `runs_path`, interleaving the arms per task; append each run as it ends."""
    wanted = {arm.name: arm_options(options, arm) for arm in arms}
    runs = runs_file(runs_path, wanted)
    try:
        have = {(r.record_id, r.arm): r for r in runs.load() if r.arm in wanted}
    except ValueError as exc:
        raise BenchError(f"{exc} (start afresh without --resume)") from None
    todo = [(record, arm) for record in records for arm in arms if (str(record.id), arm.name) not in have]
    counter = progress.add_task(", ".join(a.name for a in arms), total=len(records) * len(arms),
                                completed=len(records) * len(arms) - len(todo))
    client = LLMClient(settings)
    try:
        for record, arm in todo:
            run = await run_arm(record, arm, options, settings, client)
            runs.append(run)
            have[(run.record_id, run.arm)] = run
            progress.advance(counter)
    finally:
        await client.close()
    return [have[(str(record.id), arm.name)] for record in records for arm in arms]


# ---------------------------------------------------------------- scoring through ds-benchmark


@dataclass
class Answer:
    """One configuration's outcome on one task, before scoring."""

    record_id: str
    answer: str | None
    confidence: float | None
    tokens: int
    wall_s: float


def _as_record(record: TaskRecord, answer: Answer, prefix: str) -> str:
    """A copy of the task record carrying one configuration's answer and a trace entry with its cost."""
    ended = time.time()
    entry = TraceEntry(STAGE, "ok", ended - answer.wall_s, ended, answer.wall_s, 1, 0, answer.tokens)
    copy = dataclasses.replace(record, id=f"{prefix}|{record.id}", trace=[entry],
                               consensus={"answer": answer.answer, "confidence": answer.confidence})
    return json.dumps(copy.to_dict())


def score(records: dict[str, TaskRecord], configurations: dict[str, list[Answer]]) -> dict[str, list[dict]]:
    """Every configuration's answers through one `ds-benchmark score`; each configuration's scored records."""
    lines = "".join(_as_record(records[a.record_id], a, name) + "\n"
                    for name, answers in configurations.items() for a in answers)
    scored: dict[str, list[dict]] = {name: [] for name in configurations}
    for line in _ds_benchmark("score", stdin=lines).splitlines():
        row = json.loads(line)
        name, _, original = str(row["id"]).partition("|")
        scored[name].append({**row, "id": original})
    return scored


def report(scored: list[dict], wall_s: float) -> dict[str, Any]:
    """`ds-benchmark report`'s figures and outcomes for one configuration's scored records."""
    text = "".join(json.dumps(row) + "\n" for row in scored)
    results = json.loads(_ds_benchmark("report", "-", "--wall-s", f"{max(wall_s, 1e-6):.6f}", stdin=text))
    return results["configurations"][0]


# ---------------------------------------------------------------- the configurations


@dataclass
class BenchFigures(Contract):
    """One configuration's figures over the bench's tasks."""

    name: str
    agents: int
    weighting: str
    measure: str
    doubt: bool
    temperature: float
    keep: float
    early_stop: str  # off, replayed (the rules applied to full traces) or live
    accuracy: float | None
    accuracy_ci95: list[float] | None
    ds: float
    ds_ci95: list[float] | None
    calibration_error: float | None
    overconfident_wrong: int
    tokens: int
    tokens_per_task: float
    wall_s: float
    wall: str  # measured, or estimated (replayed: each task's time scaled by the engine steps it kept)
    correct: list[bool] = field(default_factory=list)  # per task, in task order
    scores: list[float] = field(default_factory=list)  # per task: difficulty x s_i, in task order


@dataclass
class Goal(Contract):
    """One of the issue's goals, measured: met or not, with the figures that say so."""

    name: str
    met: bool
    detail: str
    figures: dict[str, Any]


@dataclass
class BenchResults(Contract):
    """What `bench` measured."""

    SCHEMA = SCHEMA

    setup: dict[str, Any]
    chosen: Options
    configurations: list[BenchFigures]
    grid: list[dict[str, Any]]
    goals: list[Goal]
    reliability: dict[str, list[list[float]]]
    created_at: float


def variants(base: Options) -> list[Options]:
    """The weightings compared on the same traces: majority, CISC and DeepConf, each measure, with and without doubt."""
    plain = [dataclasses.replace(base, weighting="unweighted", doubt=d) for d in (False, True)]
    cisc = [dataclasses.replace(base, weighting="cisc", measure=m, temperature=t, doubt=d)
            for m in MEASURES for t in CISC_TEMPERATURES for d in (False, True)]
    deepconf = [dataclasses.replace(base, weighting="deepconf", measure=m, keep=k, doubt=d)
                for m in MEASURES for k in DEEPCONF_KEEP for d in (False, True)]
    return plain + cisc + deepconf


def label(options: Options) -> str:
    """A configuration's weighting in words."""
    if options.weighting == "unweighted":
        return "majority" + (" + doubt" if options.doubt else "")
    knob = f"T={options.temperature:g}" if options.weighting == "cisc" else f"keep={options.keep:g}"
    return f"{options.weighting} {options.measure} {knob}" + (" + doubt" if options.doubt else "")


def signals(run: ArmRun) -> list[Signal]:
    """The finished traces of a run as the vote sees them."""
    return [Signal(t.key, t.confidences, t.logprobs) for t in run.traces if t.status == "done"]


def revote(run: ArmRun, options: Options) -> Answer:
    """The answer the run's full traces give under `options` (no early stop): equal tokens for every weighting."""
    result = replay(signals(run), dataclasses.replace(options, early_stop=False))
    return Answer(run.record_id, _answer_for(run, result), _share(result), run.tokens, run.wall_s)


def replayed(run: ArmRun, options: Options) -> Answer:
    """The answer, tokens and estimated time of the run's traces had `options`' early stop been on."""
    result = replay(signals(run), dataclasses.replace(options, early_stop=True))
    full_steps = max((len(s.confidences) for s in signals(run)), default=0)
    share = result.steps / full_steps if full_steps else 1.0
    tokens = run.tokens - (result.full_tokens - result.tokens)
    return Answer(run.record_id, _answer_for(run, result), _share(result), tokens, run.wall_s * share)


def live(run: ArmRun) -> Answer:
    """The answer a live run wrote."""
    c = run.consensus
    return Answer(run.record_id, c.get("answer"), c.get("confidence"), run.tokens, run.wall_s)


def _answer_for(run: ArmRun, result: Replayed) -> str | None:
    answers = [t.answer for t in run.traces if t.status == "done" and t.key == result.tally.winner]
    return answers[0] if answers else None


def _share(result: Replayed) -> float | None:
    return None if result.tally.share is None else round(result.tally.share, 6)


def figures(name: str, options: Options, stop: str, answers: list[Answer], scored: list[dict],
            wall: str, order: list[str]) -> BenchFigures:
    """A configuration's figures from its scored records and `ds-benchmark report`."""
    wall_s = sum(a.wall_s for a in answers)
    config = report(scored, wall_s)
    f = config["figures"]
    by_id = {o["id"]: o for o in config["outcomes"]}
    correct = [bool(by_id[i]["correct"]) for i in order]
    confidences = [by_id[i]["confidence"] for i in order]
    difficulty = {o["id"]: o["difficulty"] for o in config["outcomes"]}
    tokens = sum(a.tokens for a in answers)
    return BenchFigures(
        name=name, agents=options.agents, weighting=options.weighting, measure=options.measure, doubt=options.doubt,
        temperature=options.temperature, keep=options.keep, early_stop=stop, accuracy=f["accuracy"],
        accuracy_ci95=f["accuracy_ci95"], ds=f["ds"], ds_ci95=f["ds_ci95"],
        calibration_error=calibration_error(confidences, correct), overconfident_wrong=f["overconfident_wrong"],
        tokens=tokens, tokens_per_task=round(tokens / max(1, len(answers)), 2), wall_s=round(wall_s, 3), wall=wall,
        correct=correct, scores=[by_id[i]["score"] * difficulty[i] for i in order],
    )


def choose(grid: list[tuple[Options, BenchFigures]]) -> Options:
    """The weighting with the best D/s on the grid (then accuracy, then the lower calibration error)."""
    best = max(grid, key=lambda row: (round(row[1].ds, 9), row[1].accuracy or 0.0, -(row[1].calibration_error or 1)))
    return best[0]


def goals(configs: dict[str, BenchFigures], default_n: int, stop_n: int | None) -> list[Goal]:
    """The issue's goals, measured at the default number of agents."""
    majority, weighted = configs[f"{default_n} agents, majority"], configs[f"{default_n} agents, weighted"]
    score_diff = paired_difference(majority.scores, weighted.scores)
    accuracy_diff = paired_difference([float(c) for c in majority.correct], [float(c) for c in weighted.correct])
    out = [Goal(
        "the weighted vote beats plain majority at equal tokens",
        met=weighted.ds > majority.ds and accuracy_diff["mean"] >= 0,
        detail=f"{default_n} agents, the same traces: D/s {majority.ds:.4f} -> {weighted.ds:.4f}, accuracy "
               f"{majority.accuracy} -> {weighted.accuracy} (paired difference {accuracy_diff['mean']:+.3f}, "
               f"95% [{accuracy_diff['low']:+.3f}, {accuracy_diff['high']:+.3f}])",
        figures={"score_difference": score_diff, "accuracy_difference": accuracy_diff},
    )]
    out.append(Goal(
        "the confidence is better calibrated than the majority's vote share",
        met=(weighted.calibration_error or 1.0) < (majority.calibration_error or 1.0),
        detail=f"expected calibration error {majority.calibration_error:.3f} (majority share) -> "
               f"{weighted.calibration_error:.3f} (chosen weighting)",
        figures={"majority": majority.calibration_error, "weighted": weighted.calibration_error},
    ))
    if stop_n is not None:
        full, stopped = configs[f"{stop_n} agents, weighted"], configs[f"{stop_n} agents, weighted, early stop (live)"]
        saved = 1.0 - stopped.tokens / full.tokens if full.tokens else 0.0
        diff = paired_difference([float(c) for c in full.correct], [float(c) for c in stopped.correct])
        out.append(Goal(
            f"early stop saves at least {TOKEN_SAVING_GOAL:.0%} of tokens at equal accuracy",
            met=saved >= TOKEN_SAVING_GOAL and diff["high"] >= 0,  # not worse beyond the interval
            detail=f"{stop_n} agents, live: tokens {full.tokens} -> {stopped.tokens} ({saved:.0%} saved), accuracy "
                   f"{full.accuracy} -> {stopped.accuracy} (paired difference {diff['mean']:+.3f}, 95% "
                   f"[{diff['low']:+.3f}, {diff['high']:+.3f}])",
            figures={"tokens_saved": round(saved, 4), "accuracy_difference": diff},
        ))
    return out


def _progress() -> Progress:
    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=not console.is_terminal)


def bench(suite_args: list[str], agents: list[int], stop_agents: list[int], base: Options, settings: Settings,
          runs_path: Path, resume: bool = False) -> BenchResults:
    """Run the bench (see the module docstring); the results. Runs are kept in `runs_path` as they finish."""
    records = suite_records(suite_args)
    if not records:
        raise BenchError("the suite has no tasks")
    if not resume:
        runs_file(runs_path).start(resume=False)
    by_id = {str(r.id): r for r in records}
    order = list(by_id)
    default_n = base.agents if base.agents in agents else max(agents)
    stop_n = default_n if default_n in stop_agents else max(stop_agents, default=None)
    with _progress() as progress:
        full = _by_arm(asyncio.run(collect(records, [Arm(n, False) for n in agents], base, settings, runs_path,
                                           progress)))
        grid_options = [dataclasses.replace(o, agents=default_n) for o in variants(base)]
        grid_answers = {label(o): [revote(run, o) for run in full[Arm(default_n, False).name]] for o in grid_options}
        grid_scored = score(by_id, grid_answers)
        grid = [(o, figures(label(o), o, "off", grid_answers[label(o)], grid_scored[label(o)], "measured", order))
                for o in grid_options]
        chosen = choose(grid)
        stopped = _by_arm(asyncio.run(collect(records, [Arm(n, True) for n in stop_agents], chosen, settings,
                                              runs_path, progress)))
    majority = dataclasses.replace(base, weighting="unweighted", doubt=False)
    plans: dict[str, tuple[Options, str, list[Answer], str]] = {}
    for n in agents:
        for word, options in (("majority", majority), ("weighted", chosen)):
            options = dataclasses.replace(options, agents=n)
            runs = full[Arm(n, False).name]
            plans[f"{n} agents, {word}"] = (options, "off", [revote(r, options) for r in runs], "measured")
            plans[f"{n} agents, {word}, early stop (replayed)"] = (
                options, "replayed", [replayed(r, options) for r in runs], "estimated")
    for n in stop_agents:
        plans[f"{n} agents, weighted, early stop (live)"] = (
            dataclasses.replace(chosen, agents=n, early_stop=True), "live",
            [live(r) for r in stopped[Arm(n, True).name]], "measured")
    scored = score(by_id, {name: plan[2] for name, plan in plans.items()})
    configs = {name: figures(name, o, stop, answers, scored[name], wall, order)
               for name, (o, stop, answers, wall) in plans.items()}
    return BenchResults(
        setup={"suite": suite_args, "tasks": len(records), "agents": agents, "stop_agents": stop_agents,
               "default_agents": default_n, "model": settings.oracle_model, "max_tokens": base.max_tokens,
               "backend": "embedded" if settings.embedded else "remote", "machine": machine(),
               "versions": {p: package_version(p) for p in (STAGE, "mimo-core", "mimo-engine", "ds-benchmark")}},
        chosen=dataclasses.replace(chosen, agents=base.agents, early_stop=True),
        configurations=list(configs.values()),
        grid=[{"label": label(o), **{k: getattr(f, k) for k in ("weighting", "measure", "doubt", "temperature",
                                                                "keep", "accuracy", "ds", "calibration_error",
                                                                "overconfident_wrong")}} for o, f in grid],
        goals=goals(configs, default_n, stop_n),
        reliability={name: reliability(_confidences(plans[name][2], order), configs[name].correct)
                     for name in (f"{default_n} agents, majority", f"{default_n} agents, weighted")},
        created_at=time.time(),
    )


def _by_arm(runs: Iterable[ArmRun]) -> dict[str, list[ArmRun]]:
    grouped: dict[str, list[ArmRun]] = {}
    for run in runs:
        grouped.setdefault(run.arm, []).append(run)
    return grouped


def _confidences(answers: list[Answer], order: list[str]) -> list[float | None]:
    by_id = {a.record_id: a.confidence for a in answers}
    return [by_id[i] for i in order]
