"""The D/s benchmark through the pipe: a suite, one or five configurations, records kept as they finish, a report.

A run is four files side by side: `NAME.run.json` (what the run is: its suite and configurations, so that
`--resume` continues exactly it), `NAME.records.jsonl` (every scored record, appended and synced as the pipe writes
it), `NAME.json` (the `mimo.results/1` file `ds-benchmark report` writes at the end) and `NAME.log` (what the stages
said on stderr).

On the embedded engine each configuration gets an engine of its own with an empty KV cache (the model files are
shared), warmed up before its first task: no configuration inherits another's cached prefixes, and loading models
is never counted as the pipeline's time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ds_benchmark.report import wall_time
from ds_benchmark.results import Results
from ds_benchmark.suites import build_suite
from mimo_core import daemon
from mimo_core.client import LLMClient
from mimo_core.contract import Contract
from mimo_core.record import COMPONENTS, TaskRecord, parse_record
from mimo_core.runs import RunsFile
from mimo_core.settings import Settings
from mimo_core.stats import decisions_per_second
from mimo_core.tools import run_tool, tool_command

from .pipe import PipeError, run_pipe

ENGINE_IDLE_TIMEOUT_S = 120.0  # a private engine left behind by a killed run exits on its own soon after
RUN_FILE = re.compile(r"results_v(\d+)\.(?:json|run\.json|records\.jsonl|log)$")  # any file of run N


@dataclass
class RunPlan(Contract):
    """What a benchmark run is: its tasks and its configurations (the components each one switches off)."""

    SCHEMA = "mimo.benchmark-run/1"

    n: int
    domains: list[str]
    seed: int
    math_source: str
    configurations: list[list[str]]
    created_at: float

    def __post_init__(self) -> None:
        unknown = sorted({c for config in self.configurations for c in config} - set(COMPONENTS))
        if unknown or not self.configurations:
            raise ValueError(f"configurations must name components among {', '.join(COMPONENTS)}")

    def tasks(self) -> list[TaskRecord]:
        """The suite's records (the same for the same n, domains, seed and math source)."""
        return build_suite(self.n, self.domains, self.seed, math_source=self.math_source)


def configurations(ablation: bool) -> list[list[str]]:
    """The full pipeline, and with `ablation` each component switched off alone."""
    return [[]] + ([[component] for component in COMPONENTS] if ablation else [])


def configuration_name(disabled: list[str]) -> str:
    """A configuration's name as `ds-benchmark report` gives it."""
    return "full" if not disabled else "without " + "+".join(disabled)


@dataclass(frozen=True)
class RunFiles:
    """The files of one run, named after its results file."""

    results: Path

    @property
    def records(self) -> Path:
        return self.results.with_suffix(".records.jsonl")

    @property
    def plan(self) -> Path:
        return self.results.with_suffix(".run.json")

    @property
    def log(self) -> Path:
        return self.results.with_suffix(".log")

    @property
    def done(self) -> RunsFile[TaskRecord]:
        """The records file as the run's runs file: one scored record per task and configuration; a record whose
        stage failed (its `error` set, e.g. the engine died under it) is dropped, to be run again."""
        return RunsFile(self.records, parse_record, key=lambda r: (str(r.id), tuple(r.disabled)),
                        keep=lambda r: r.error is None and bool(r.verdict))


def default_results_path(folder: Path, resume: bool) -> Path:
    """Without --out: a new run takes the first free `results_vN.json` (so two runs give the quickstart's
    results_v1.json and results_v2.json); --resume takes the newest run that has a plan."""
    numbers = {int(m.group(1)) for p in folder.glob("results_v*") if (m := RUN_FILE.match(p.name))}
    if resume:
        planned = [n for n in numbers if RunFiles(folder / f"results_v{n}.json").plan.is_file()]
        if not planned:
            raise ValueError(f"--resume: no run to continue in {folder} (no results_vN.run.json); give --out")
        return folder / f"results_v{max(planned)}.json"
    return folder / f"results_v{max(numbers, default=0) + 1}.json"


def engine_settings(settings: Settings, files: RunFiles, disabled: list[str]) -> Settings:
    """The settings a configuration's stages run under: on the embedded engine, a private engine state (and KV
    tiers) under the cache's `runs/` folder, named after the run and the configuration."""
    if not settings.embedded:
        return settings
    run_id = hashlib.sha256(str(files.results.resolve()).encode()).hexdigest()[:10]
    name = configuration_name(disabled).replace(" ", "-").replace("+", "-")
    private = settings.with_cache_dir(settings.cache_dir / "runs" / f"{files.results.stem}-{run_id}" / name)
    return dataclasses.replace(private, engine_idle_timeout_s=ENGINE_IDLE_TIMEOUT_S)


def warm_up(settings: Settings) -> None:
    """Load the models the stages use (one token from each), so that no task's time includes loading them."""
    async def both() -> None:
        client = LLMClient(settings)
        for model in sorted({settings.oracle_model, settings.drafter_model}):
            await client.chat([{"role": "user", "content": "Say OK."}], model=model, max_tokens=1)
    asyncio.run(both())


# What a component measures once per model (and keeps with the models' calibrations, shared by every
# configuration like the model files), as the command that measures it for these domains.
CALIBRATIONS = {
    "precision-router": ("precision-router", "calibrate", "--domains"),
    "spec-reasoner": ("spec-reasoner", "calibrate", "--if-missing", "--domains"),
}


def calibrate(env: dict[str, str], disabled: list[str], domains: list[str], log: IO[str]) -> None:
    """Measure what the enabled components measure once per model (what each precision policy costs; whether step
    drafting pays and each block drafter's acceptance) before any task is timed, as the models are loaded first."""
    for component, (command, *args) in CALIBRATIONS.items():
        if component in disabled:
            continue
        done = subprocess.run([tool_command(command), *args, *domains], env=env, stdout=subprocess.DEVNULL,
                              stderr=log, text=True)
        if done.returncode != 0:
            raise PipeError(f"{command} calibrate failed (exit {done.returncode}); its reason is in {log.name}")


class Progress:
    """What a run tells its watcher; the default says nothing."""

    def starting(self, disabled: list[str], todo: int) -> None:
        """A configuration is about to warm up and run `todo` tasks."""

    def warming(self) -> contextlib.AbstractContextManager:
        """Held while the configuration's engine starts and loads its models, which say on stderr how far they are
        (a live display would fight with those lines)."""
        return contextlib.nullcontext()

    def finished(self, disabled: list[str], record: TaskRecord, records: list[TaskRecord]) -> None:
        """A record came out of the pipe, scored; `records` are the configuration's so far."""


def run_configuration(plan: RunPlan, files: RunFiles, settings: Settings, disabled: list[str],
                      done: list[TaskRecord], progress: Progress) -> list[TaskRecord]:
    """Run the plan's tasks not yet done under one configuration, appending each scored record to the records
    file as it arrives; returns the configuration's records, old and new."""
    mine = [r for r in done if r.disabled == disabled]
    finished = {str(r.id) for r in mine}
    todo = [r for r in plan.tasks() if str(r.id) not in finished]
    for record in todo:
        record.config["disabled"] = list(disabled)
    if not todo:
        return mine
    progress.starting(disabled, len(todo))
    stage_settings = engine_settings(settings, files, disabled)
    if settings.embedded:
        daemon.stop_engine(stage_settings)  # one a killed run left behind; a fresh engine has an empty cache
    try:
        env = {**os.environ, **stage_settings.to_env()}
        with open(files.log, "a", encoding="utf-8") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {configuration_name(disabled)}: "
                      f"{len(todo)} tasks\n")
            log.flush()
            with progress.warming():
                warm_up(stage_settings)
                calibrate(env, disabled, sorted({r.domain for r in todo}), log)
            for record in run_pipe(todo, env, log):
                files.done.append(record)
                mine.append(record)
                progress.finished(disabled, record, mine)
    finally:
        if settings.embedded:
            daemon.stop_engine(stage_settings)
    return mine


def ds_so_far(records: list[TaskRecord]) -> float | None:
    """D/s of the records scored so far, over their model-work time (as the report computes it)."""
    wall = wall_time(records)
    if not wall:
        return None
    scored = [r.verdict for r in records if isinstance(r.verdict.get("score"), (int, float))]
    return float(decisions_per_second([v["difficulty"] for v in scored], [v["score"] for v in scored], wall))


def report(files: RunFiles) -> Results:
    """Write the results file through `ds-benchmark report`, and read it back."""
    run_tool("ds-benchmark", "report", str(files.records), "--out", str(files.results))
    return Results.load(files.results)


def start_or_resume(files: RunFiles, plan: RunPlan | None, resume: bool) -> RunPlan:
    """The run's plan: written for a new run (refusing to overwrite one), read back for --resume."""
    if resume:
        if not files.plan.is_file():
            raise ValueError(f"--resume: {files.plan} does not exist (no run to continue)")
        return RunPlan.load(files.plan)
    if files.plan.exists() or files.records.exists():
        raise ValueError(f"{files.results}: a run is already there; --resume continues it, or choose another --out")
    assert plan is not None
    files.results.parent.mkdir(parents=True, exist_ok=True)
    files.plan.write_text(json.dumps(plan.to_dict(), indent=2) + "\n", encoding="utf-8")
    return plan


def run_benchmark(plan: RunPlan, files: RunFiles, settings: Settings, progress: Progress | None = None) -> Results:
    """Every configuration of the plan through the pipe, then the results file; resumes from the records file."""
    done = files.done.load()
    for disabled in plan.configurations:
        run_configuration(plan, files, settings, disabled, done, progress or Progress())
    results = report(files)
    if settings.embedded:
        shutil.rmtree(engine_settings(settings, files, []).cache_dir.parent, ignore_errors=True)
    return results

