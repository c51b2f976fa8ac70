"""The three commands of the quickstart: run_pipeline, run_benchmark, compare_benchmarks (thin: parse, call, print)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ds_benchmark.compare import compare_files, impact_table, print_comparison
from ds_benchmark.report import summary_lines
from mimo_core import daemon
from mimo_core.command import config_option, domain_words, domains_option, stage_settings
from mimo_core.console import EXIT_FAILED, EXIT_INTERRUPTED, cli_app, fail, version_option
from mimo_core.contract import ContractError
from mimo_core.record import COMPONENTS, DOMAINS, TaskRecord

from . import benchmark
from .pages import comparison_page, results_page
from .pipe import PipeError, shell_command
from .plots import comparison_figure, png
from .show import render
from .task import failure, run_task, task_record

VersionOption = version_option("unified-pipeline")
ConfigOption = config_option()


def _stop_on_sigterm() -> None:
    """SIGTERM ends the run like Ctrl-C: the stages are stopped and what is written stays written."""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))


# ------------------------------------------------------------------------------------------------ run_pipeline

PIPELINE = "run_pipeline.py"
pipeline_app = cli_app()


@pipeline_app.command(help=f"""Answer one task; show the answer, its confidence, and what each stage decided, took
and spent.

The task's record goes through the five stage tools joined by OS pipes, exactly as in a shell:
{shell_command()}. Every stage uses the same backend: the shared embedded engine, or MIMO_BASE_URL.

Exit codes: 0 answered and every stage ok; 1 a stage failed, or the pipe did (said on stderr: the stage, its
trace entry and the record's error; an answer that came out past a failed stage is still shown); 2 bad input;
130 interrupted.""")
def run_pipeline(
    task: str = typer.Option(..., "--task", metavar="TEXT", help="The question or problem."),
    domain: str = typer.Option(..., "--domain", metavar="DOMAIN", help=f"One of {', '.join(DOMAINS)}."),
    reference: str | None = typer.Option(None, "--reference", metavar="ANSWER",
                                         help="The expected answer (math, general: a number or text; triage: an "
                                              "ESI level). Without it the answer is not scored."),
    disable: list[str] = typer.Option([], "--disable", metavar="COMPONENT",
                                      help=f"Switch a component off (its stage does its baseline); repeat for more: "
                                           f"{', '.join(COMPONENTS)}."),
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON instead of the tables."),
    config: Path | None = ConfigOption,
    version: bool = VersionOption,
) -> None:
    settings = stage_settings(PIPELINE, config)
    try:
        record = task_record(task, domain, reference, disable)
    except ValueError as exc:
        fail(str(exc), prog=PIPELINE)
    _stop_on_sigterm()
    if settings.embedded:  # the engine starts and loads before the pipe, saying so here (the stages' stderr is a log)
        try:
            daemon.ensure_engine(settings, prog=PIPELINE)
        except daemon.EngineError as exc:
            fail(str(exc), code=1, prog=PIPELINE)
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED)
    with tempfile.NamedTemporaryFile("w+", prefix="run_pipeline-", suffix=".log", encoding="utf-8") as log:
        try:
            record = run_task(record, {**os.environ, **settings.to_env()}, log)
        except PipeError as exc:
            fail(str(exc), code=1, prog=PIPELINE)
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED)
    if as_json:
        print(json.dumps(record.to_dict(), indent=2, ensure_ascii=False), flush=True)
    else:
        Console().print(render(record))
    problem = failure(record)
    if problem:
        fail(problem, code=EXIT_FAILED, prog=PIPELINE)


# ------------------------------------------------------------------------------------------------ run_benchmark

BENCHMARK = "run_benchmark.py"
benchmark_app = cli_app()


class BarProgress(benchmark.Progress):
    """A rich progress bar over every task of every configuration: done, D/s so far, time left."""

    def __init__(self, bar: Progress, total: int, done: int):
        self.bar = bar
        self.task = bar.add_task("starting", total=total, completed=done, ds="–")

    def starting(self, disabled: list[str], todo: int) -> None:
        self.bar.update(self.task, description=f"{benchmark.configuration_name(disabled)} (warming up)")

    @contextlib.contextmanager
    def warming(self):
        self.bar.stop()  # the engine's own waiting line takes the terminal while it starts and loads
        try:
            yield
        finally:
            self.bar.start()

    def finished(self, disabled: list[str], record: TaskRecord, records: list[TaskRecord]) -> None:
        ds = benchmark.ds_so_far(records)
        self.bar.update(self.task, advance=1, description=benchmark.configuration_name(disabled),
                        ds="–" if ds is None else f"{ds:.3f}")


def _plan(files: benchmark.RunFiles, resume: bool, n: int | None, domains: list[str] | None, seed: int | None,
          math_source: str | None, ablation: bool) -> benchmark.RunPlan:
    """The new run's plan, or the resumed one's; refuses flags that contradict the run being resumed."""
    if not resume:
        plan = benchmark.RunPlan(n=30 if n is None else n, domains=domains or ["math", "coding", "triage"],
                                 seed=seed or 0, math_source=math_source or "gsm8k",
                                 configurations=benchmark.configurations(ablation), created_at=0.0)
        plan.tasks()  # a bad n, domain or source is said now, before anything is written
        return benchmark.start_or_resume(files, plan, resume=False)
    plan = benchmark.start_or_resume(files, None, resume=True)
    given = {"--n": (n, plan.n), "--domains": (domains, plan.domains), "--seed": (seed, plan.seed),
             "--math-source": (math_source, plan.math_source),
             "--ablation": (ablation or None, len(plan.configurations) > 1 or None)}
    clash = [f"{flag} {mine} (the run has {theirs})" for flag, (mine, theirs) in given.items()
             if mine is not None and mine != theirs]
    if clash:
        raise ValueError(f"--resume continues {files.results} as it was started: drop " + ", ".join(clash))
    return plan


@benchmark_app.command(context_settings={"allow_extra_args": True})
def run_benchmark(
    ctx: typer.Context,
    n: int | None = typer.Option(None, "--n", metavar="N", help="Tasks per configuration, split evenly over the "
                                                               "domains [default: 30]."),
    domains: list[str] | None = domains_option(None, "The domains to draw tasks from, space-separated, among "
                                                     "math, coding, triage [default: math coding triage]."),
    seed: int | None = typer.Option(None, "--seed", metavar="SEED",
                                    help="The suite's seed: the same n, domains and seed give the same tasks "
                                         "[default: 0]."),
    math_source: str | None = typer.Option(None, "--math-source", metavar="SOURCE",
                                           help="Where math problems come from: gsm8k (GSM8K's test set) or "
                                                "templates (generated from the seed) [default: gsm8k]."),
    ablation: bool = typer.Option(False, "--ablation", help="Also run with each component switched off alone, and "
                                                            "report the component impact table."),
    out: Path | None = typer.Option(None, "--out", metavar="FILE",
                                    help="The results JSON; the run's other files go beside it (NAME.run.json, "
                                         "NAME.records.jsonl, NAME.log) [default: the next free results_vN.json "
                                         "in this folder]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run of --out (without --out: the newest "
                                                        "results_vN.json in this folder), keeping every record "
                                                        "already scored; other flags may only repeat the run's."),
    html_path: Path | None = typer.Option(None, "--html", metavar="FILE",
                                          help="Also write a self-contained HTML report."),
    config: Path | None = ConfigOption,
    version: bool = VersionOption,
) -> None:
    """Run ds-benchmark's suite through the pipeline and write the results; D/s is over the wall time of model
    work (the union of the stages' busy time: not model loading, not scoring).

    Scored records are written as they finish (NAME.records.jsonl), so an interrupted or failed run loses nothing:
    --resume continues it. At the end `ds-benchmark report` writes the results (NAME.json).

    Exit codes: 0 done; 1 the pipeline failed (--resume continues); 2 bad input; 130 interrupted (--resume)."""
    settings = stage_settings(BENCHMARK, config)
    try:
        files = benchmark.RunFiles(out or benchmark.default_results_path(Path.cwd(), resume))
        named = domain_words(domains or [], ctx.args, BENCHMARK)
        plan = _plan(files, resume, n, named or None, seed, math_source, ablation)
        done = len(files.done.load())
    except (ValueError, ContractError, OSError) as exc:
        fail(str(exc), prog=BENCHMARK)
    console = Console(stderr=True)
    total = plan.n * len(plan.configurations)
    console.print(f"run_benchmark: {plan.n} tasks x {len(plan.configurations)} configuration(s) -> {files.results}"
                  + (f" (resuming: {done} of {total} done)" if resume else ""))
    _stop_on_sigterm()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("D/s {task.fields[ds]}"),
               TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console) as bar:
            results = benchmark.run_benchmark(plan, files, settings, BarProgress(bar, total, done))
    except KeyboardInterrupt:
        kept = len(files.done.load())
        console.print(f"interrupted: {kept} of {total} records kept in {files.records}; "
                      f"`--resume --out {files.results}` continues")
        raise typer.Exit(EXIT_INTERRUPTED)
    except (PipeError, RuntimeError, OSError) as exc:
        fail(f"{exc} (records so far are in {files.records}; --resume continues)", code=1, prog=BENCHMARK)
    for line in summary_lines(results):
        console.print(line, markup=False, highlight=False)
    if results.impact:
        Console().print(impact_table(results.impact))
    if html_path:
        html_path.write_text(results_page(results, f"D/s benchmark: {files.results.name}"), encoding="utf-8")
        console.print(f"HTML report: {html_path}")
    console.print(f"results: {files.results}")


# ------------------------------------------------------------------------------------------------ compare

COMPARE = "compare_benchmarks.py"
compare_app = cli_app()


@compare_app.command()
def compare_benchmarks(
    a: Path = typer.Argument(..., metavar="A", help="Results JSON of the baseline run."),
    b: Path = typer.Argument(..., metavar="B", help="Results JSON of the run compared with it."),
    plot: Path | None = typer.Option(None, "--plot", metavar="PNG",
                                     help="Write the charts: D/s and accuracy of A and B with their 95% intervals, "
                                          "and B - A with its paired interval."),
    html_path: Path | None = typer.Option(None, "--html", metavar="FILE",
                                          help="Write a self-contained HTML report (tables and the charts)."),
    as_json: bool = typer.Option(False, "--json", help="The comparison JSON alone: no tables on stderr."),
    force: bool = typer.Option(False, "--force", help="Compare runs that are not comparable (the output says "
                                                      "they are not)."),
    version: bool = VersionOption,
) -> None:
    """B minus A for D/s, accuracy, errors and speed; the component impact tables where a file has an ablation.

    As `ds-benchmark compare` (the same comparison): the comparison JSON on stdout, the tables on stderr; on a
    terminal, the tables alone.

    A and B are two results files of run_benchmark.py with the same --n and --seed (and so the same tasks): tasks
    are paired by id, and each delta comes with a paired 95% bootstrap interval. Runs of a different --n or --seed,
    or on other tasks, models or D/s formulas, are refused with a message saying what differs; --force compares
    them anyway, and the output says they are not comparable.

    Exit codes: 0 compared; 2 bad input, or runs that are not comparable (without --force)."""
    try:
        first, second, comparison = compare_files(a, b)
    except ContractError as exc:
        fail(str(exc), prog=COMPARE)
    if not comparison.comparable and not force:
        fail(f"{a} and {b} are not comparable: {'; '.join(comparison.reasons)} (--force compares them anyway)",
             prog=COMPARE)
    print_comparison(comparison, {a.name: first, b.name: second}, tables=not as_json)
    if plot:
        plot.write_bytes(png(comparison_figure(comparison, first, second, a.stem, b.stem)))
    if html_path:
        html_path.write_text(comparison_page(comparison, first, second, a.stem, b.stem), encoding="utf-8")
    for path, what in ((plot, "plot"), (html_path, "HTML report")):
        if path:
            print(f"{what}: {path}", file=sys.stderr)
