"""`ds-benchmark`: suite, difficulty, score, report, compare, sandbox."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO

import typer

from mimo_core.command import (concurrency_option, config_option, domain_words, domains_option, records_argument,
                               run_stage_command, stage_settings)
from mimo_core.console import add_version_option, cli_app, fail, run_app
from mimo_core.contract import ContractError
from mimo_core.record import RecordError, read_records, write_record

from .compare import compare_files, print_comparison
from .difficulty import markdown
from .programs import run_requests
from .report import build_results, summary_lines
from .score import FORMULAS
from .suites import DOMAINS, build_suite, difficulty_report
from .verify import score_stream

PROG = "ds-benchmark"
app = cli_app(help="Verified task suites, sandboxed checks and the decisions-per-second score.",
                  no_args_is_help=True)
add_version_option(app, "ds-benchmark")
FormulaOption = typer.Option("design", "--formula", help=f"D/s formula: {' or '.join(FORMULAS)} (the seed's snippet).")


@app.command(context_settings={"allow_extra_args": True})
def suite(
    ctx: typer.Context,
    n: int = typer.Option(..., "--n", help="Number of tasks in all, split evenly over the domains."),
    domains: list[str] = domains_option(list(DOMAINS), "Domains: --domains math coding triage."),
    seed: int = typer.Option(0, "--seed", help="The suite is the same for the same seed."),
    dataset: str | None = typer.Option(None, "--dataset", help="gsm8k:PATH takes math from GSM8K's JSONL."),
    math_source: str = typer.Option("gsm8k", "--math-source",
                                    help="Math from: gsm8k (GSM8K's test set, shipped) or templates (our stories)."),
) -> None:
    """Write N task records (JSONL, with `reference`) to stdout."""
    gsm8k = None
    if dataset:
        kind, _, path = dataset.partition(":")
        if kind != "gsm8k" or not path:
            fail(f"--dataset {dataset!r}: expected gsm8k:PATH", prog=PROG)
        gsm8k = Path(path)
    try:
        records = build_suite(n, domain_words(domains, ctx.args, PROG), seed, gsm8k, math_source)
    except (ValueError, OSError) as exc:
        fail(str(exc), prog=PROG)
    for record in records:
        write_record(record, sys.stdout)


@app.command()
def difficulty(
    n: int = typer.Option(1000, "--n", help="Tasks drawn from each generated suite (math templates, triage)."),
    seed: int = typer.Option(0, "--seed", help="The generated suites' seed."),
) -> None:
    """Print how each shipped suite spreads over the difficulty scale 1..5, as a markdown table.

    GSM8K's test set and HumanEval are counted whole; the generated suites from N tasks at the seed."""
    try:
        print(markdown(difficulty_report(n, seed)))
    except ValueError as exc:
        fail(str(exc), prog=PROG)


@app.command()
def score(
    file: Path | None = records_argument(),
    concurrency: int | None = concurrency_option(),
    config: Path | None = config_option(),
) -> None:
    """Check each record's answer against its reference and write it on with `verdict`.

    Coding answers run in the bubblewrap sandbox: correct only when the problem's tests passed on plain answers.

    A one-line summary (records, correct, wrong, not run, errors) goes to stderr at the end.

    Only a checked answer is right or wrong. A record that could not be checked (a stage's error left it no answer,
    its reference is unusable, no sandbox) gets `verdict.correct: null`, scores 0 and counts as an error; one with
    no reference is not scored. `verdict.unchecked` says which.

    Exit codes: 0 done (errors are counted in the summary); 2 a line that is not a record; 3 no sandbox works here,
    so coding records were not run (the other domains are still scored)."""
    settings = stage_settings(PROG, config)

    def scored(source: IO[str]) -> int:
        code, tally = score_stream(source=source, concurrency=concurrency, settings=settings)
        print(f"score: {tally.summary()}", file=sys.stderr)
        return code

    run_stage_command(PROG, file, scored)


@app.command()
def report(
    file: Path = typer.Argument(..., help="Scored records (JSONL); - for stdin."),
    out: Path | None = typer.Option(None, "--out", help="Write the results JSON here instead of stdout."),
    wall_s: float | None = typer.Option(None, "--wall-s", min=0.000001, help="Wall time instead of the trace's."),
    formula: str = FormulaOption,
) -> None:
    """Write the mimo.results/1 JSON of a scored run (it only reads: unscored records are reported as errors)."""
    if formula not in FORMULAS:
        fail(f"--formula {formula!r}: one of {', '.join(FORMULAS)}", prog=PROG)
    try:
        with (sys.stdin if str(file) == "-" else open(file, encoding="utf-8")) as stream:
            results = build_results(list(read_records(stream)), wall_s, formula)
    except (RecordError, ValueError, OSError) as exc:
        fail(f"{file}: {exc}", prog=PROG)
    text = json.dumps(results.to_dict(), indent=2)
    if out:
        out.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    for line in summary_lines(results):
        print(f"report: {line}" + (f" -> {out}" if out else ""), file=sys.stderr)


@app.command()
def compare(
    a: Path = typer.Argument(..., help="Results JSON of the baseline run."),
    b: Path = typer.Argument(..., help="Results JSON of the run compared with it."),
    as_json: bool = typer.Option(False, "--json", help="The JSON alone: no tables on stderr."),
) -> None:
    """Compare two results files: JSON (mimo.comparison/1) on stdout; on stderr its table and the component impact
    table of each file that has one (on a terminal, the tables alone on stdout)."""
    try:
        first, second, comparison = compare_files(a, b)
    except ContractError as exc:
        fail(str(exc), prog=PROG)
    print_comparison(comparison, {a.name: first, b.name: second}, tables=not as_json)


@app.command()
def sandbox() -> None:
    """Run programs in the sandbox for another tool: JSON lines in, JSON lines out.

    In, per line: {"id": ..., "source": "<python program>", "limits": {...}} (limits optional, each bounded).

    Limits: wall_s, cpu_s, memory_bytes, file_bytes, disk_bytes, open_files, processes.

    Out, per line (mimo.sandbox/1): id, status (passed, failed, timed out, error), output, exit_code, isolation.

    The program sees the standard library only, no network, an empty environment; output keeps its tail, scrubbed.

    Exit codes: 0 done; 2 a bad line; 3 no sandbox works here (every result is then an error)."""
    raise typer.Exit(run_requests(sys.stdin, sys.stdout))


def main() -> None:
    """The console script."""
    run_app(app, PROG)
