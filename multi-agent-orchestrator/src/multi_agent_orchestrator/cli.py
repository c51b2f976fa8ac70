"""`multi-agent-orchestrator`: run (the pipeline stage) and bench."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import typer

from mimo_core.command import (concurrency_option, config_option, domain_words, domains_option, records_argument,
                               run_stage_command, stage_settings)
from mimo_core.console import add_version_option, cli_app, fail, run_app

from .bench import BenchError, bench as run_bench
from .confidence import MEASURES
from .options import WEIGHTINGS, Options
from .plot import save
from .stage import run as run_stage

PROG = "multi-agent-orchestrator"
DEFAULTS = Options()

app = cli_app(
    help="N agents answer each task in parallel, fork at their most uncertain token, and vote; each vote weighs "
    "the confidence measured from the agent's token logprobs, and the vote stops once it is decided.",
    no_args_is_help=True, pretty_exceptions_enable=False,
)
add_version_option(app, PROG)


def _options(**values: object) -> Options:
    try:
        return Options(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        fail(str(exc), prog=PROG)


@app.command()
def run(
    file: Path | None = records_argument(),
    agents: int = typer.Option(DEFAULTS.agents, "--agents", help="Agents per record."),
    first_wave: int = typer.Option(DEFAULTS.first_wave, "--first-wave", help="Agents started first; the others "
                                   "only if these disagree (with --early-stop; 0: all at once)."),
    branches: int = typer.Option(DEFAULTS.branches, "--branches", help="Continuations at an agent's fork (0: none)."),
    fork_entropy: float = typer.Option(DEFAULTS.fork_entropy, "--fork-entropy",
                                       help="Top-k entropy (nats) that makes a token a fork point."),
    early_stop: bool = typer.Option(DEFAULTS.early_stop, "--early-stop/--no-early-stop",
                                    help="Stop low-confidence traces, and the vote once it is decided."),
    window: int = typer.Option(DEFAULTS.window, "--window", help="Also stop when this many answers in a row agree."),
    weighting: str = typer.Option(DEFAULTS.weighting, "--weighting", help=f"One of {', '.join(WEIGHTINGS)}."),
    measure: str = typer.Option(DEFAULTS.measure, "--measure", help=f"Trace confidence: {', '.join(MEASURES)}."),
    max_tokens: int = typer.Option(DEFAULTS.max_tokens, "--max-tokens", help="Most tokens per agent."),
    model: str | None = typer.Option(None, "--model", help="The agents' model (default: MIMO_MODEL)."),
    concurrency: int | None = concurrency_option("Records at once (default: MIMO_CONCURRENCY // agents, at least 1)."),
    config: Path | None = config_option(),
) -> None:
    """Read task records, write them on with `consensus` (the answer, its confidence and every vote)."""
    options = _options(agents=agents, first_wave=first_wave, branches=branches, fork_entropy=fork_entropy, early_stop=early_stop,
                       window=window, weighting=weighting, measure=measure, max_tokens=max_tokens)
    settings = stage_settings(PROG, config, model=model)
    run_stage_command(PROG, file, lambda source: run_stage(options, settings, concurrency, source=source))


def _numbers(text: str, name: str) -> list[int]:
    try:
        numbers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        fail(f"{name} {text!r}: expected numbers separated by commas, such as 1,3,5,8", prog=PROG)
    if any(n < 1 for n in numbers):
        fail(f"{name} {text!r}: every number must be at least 1", prog=PROG)
    return numbers


@app.command(context_settings={"allow_extra_args": True})
def bench(
    ctx: typer.Context,
    n: int = typer.Option(30, "--n", min=1, help="Tasks, split evenly over the domains."),
    domains: list[str] = domains_option(["math"], "ds-benchmark suite domains: --domains math triage."),
    seed: int = typer.Option(0, "--seed", help="The suite's seed (the same tasks for the same seed)."),
    math_source: str | None = typer.Option(None, "--math-source", help="ds-benchmark suite's math source."),
    agents: str = typer.Option("1,3,5,8", "--agents", help="Numbers of agents to compare, comma-separated."),
    stop_agents: str = typer.Option("5,8", "--stop-agents", help="Numbers of agents run live with early stop."),
    max_tokens: int = typer.Option(160, "--max-tokens", help="Most tokens per agent."),
    model: str | None = typer.Option(None, "--model", help="The agents' model (default: MIMO_MODEL)."),
    out: Path = typer.Option(Path("multi-agent-orchestrator/results/bench.json"), "--out", help="Results JSON."),
    png: Path | None = typer.Option(Path("multi-agent-orchestrator/results/bench.png"), "--plot", help="Figure."),
    runs: Path = typer.Option(Path("multi-agent-orchestrator/results/runs.jsonl"), "--runs",
                              help="Every run, appended as it finishes."),
    resume: bool = typer.Option(False, "--resume", help="Keep the runs already in --runs and do only the rest."),
    config: Path | None = config_option(),
) -> None:
    """Compare numbers of agents, majority and weighted votes, with and without early stop, on ds-benchmark tasks."""
    suite_args = ["--n", str(n), "--domains", *domain_words(domains, ctx.args, PROG), "--seed", str(seed)]
    suite_args += ["--math-source", math_source] if math_source else []
    options = _options(agents=max(_numbers(agents, "--agents")), max_tokens=max_tokens)
    settings = stage_settings(PROG, config, model=model)
    try:
        results = run_bench(suite_args, _numbers(agents, "--agents"), _numbers(stop_agents, "--stop-agents"),
                            dataclasses.replace(options, agents=DEFAULTS.agents), settings, runs, resume)
    except BenchError as exc:
        fail(str(exc), code=1, prog=PROG)
    save(results, out, png)
    for goal in results.goals:
        print(f"{'met' if goal.met else 'NOT met'}: {goal.name}: {goal.detail}", file=sys.stderr)
    print(out)


def main() -> None:
    """The console script."""
    run_app(app, PROG)
