"""`spec-reasoner`: reason (the pipeline stage) and bench."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from mimo_core.command import (concurrency_option, config_option, deprecated_model, domain_words, domains_option,
                               records_argument, run_stage_command, stage_settings)
from mimo_core.console import add_version_option, cli_app, fail, run_app
from mimo_core.contract import ContractError
from mimo_core.record import RecordError, read_records
from mimo_core.settings import Settings, SettingsError
from rich.console import Console
from rich.progress import Progress

from .bench import Plan, arms, run_all, suite, summarise
from .calibration import calibrate as calibrate_pair
from .plot import plot
from .reasoner import ReasoningOptions, reason_stream

PROG = "spec-reasoner"
app = cli_app(help="Step-level speculative reasoning: a draft model writes the next reasoning steps, the oracle "
                       "scores k of them in one batched request, keeps the accepted ones and writes the first "
                       "rejected step itself.", no_args_is_help=True)
add_version_option(app, PROG)

K = typer.Option(3, "--k", help="Steps drafted, and scored in one request, per round.")
MAX_STEPS = typer.Option(16, "--max-steps", help="The most steps in a chain.")
MAX_TOKENS = typer.Option(512, "--max-tokens", help="The most completion tokens in a chain (and for the oracle alone).")
STEP_TOKENS = typer.Option(128, "--step-tokens", help="The most tokens of one step.")
DRAFT = typer.Option(None, "--draft-model", help="The draft model (else MIMO_DRAFT_MODEL, else the engine's).")
MODEL = typer.Option(None, "--model", help="The oracle (else MIMO_MODEL, else the engine's).")
ORACLE = typer.Option(None, "--oracle-model", hidden=True, help="Deprecated: --model.")
CONFIG = config_option()


def _settings(config: Optional[Path], draft: str | None = None, oracle: str | None = None) -> Settings:
    settings = stage_settings(PROG, config, draft_model=draft, model=oracle)
    try:
        settings.oracle_model, settings.drafter_model  # a remote endpoint without MIMO_MODEL fails here, in one line
    except SettingsError as exc:
        fail(str(exc), prog=PROG)
    return settings


def _options(**values) -> ReasoningOptions:
    try:
        return ReasoningOptions(**values)
    except ValueError as exc:
        fail(str(exc), prog=PROG)


@app.command()
def reason(
    file: Optional[Path] = records_argument(),
    k: int = K,
    threshold: float = typer.Option(7.0, "--threshold", help="Accept a step scored at least this (0-9)."),
    max_steps: int = MAX_STEPS,
    max_tokens: int = MAX_TOKENS,
    step_tokens: int = STEP_TOKENS,
    draft_model: Optional[str] = DRAFT,
    model: Optional[str] = MODEL,
    oracle_model: Optional[str] = ORACLE,
    concurrency: Optional[int] = concurrency_option(),
    step_drafting: str = typer.Option("auto", "--step-drafting",
                                      help="auto: draft steps only where the model pair's calibration says the "
                                           "oracle tells right steps from wrong and drafting pays; always; never."),
    criterion: str = typer.Option("rating", "--criterion", help="How --step-drafting always verifies a step: rating "
                                  "(0-9) or logprob (the oracle's mean token log-probability)."),
    drafter: str = typer.Option("auto", "--drafter", help="The block drafter of the record's calls: auto (the best "
                                "measured on the record's domain, or none), none, ngram or suffix."),
    config: Optional[Path] = CONFIG,
) -> None:
    """Read records, write each with `reasoning`: the block drafter of the record's calls and, where step drafting
    runs, the chain (a record whose config disables spec-reasoner gets no speculation and no chain)."""
    options = _options(k=k, threshold=threshold, max_steps=max_steps, max_tokens=max_tokens, step_tokens=step_tokens,
                       step_drafting=step_drafting, criterion=criterion, drafter=drafter)
    settings = _settings(config, draft_model, deprecated_model(model, oracle_model, "--oracle-model", PROG))
    run_stage_command(PROG, file, lambda source: reason_stream(options, source=source, settings=settings,
                                                               concurrency=concurrency))


@app.command(context_settings={"allow_extra_args": True})
def calibrate(
    ctx: typer.Context,
    pairing: Optional[str] = typer.Option(None, "--pairing", help="DRAFT:ORACLE (default: MIMO_DRAFT_MODEL and "
                                          "MIMO_MODEL, else the engine's)."),
    domains: list[str] = domains_option([], "Also measure the block drafters on these domains' prompts: --domains "
                                            "math coding triage."),
    k: int = K,
    if_missing: bool = typer.Option(False, "--if-missing", help="Measure only what is not kept yet."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the JSON to this file."),
    config: Optional[Path] = CONFIG,
) -> None:
    """Measure whether step drafting can pay for a model pair on this backend: how well the 0-9 rating and the
    oracle's mean token log-probability tell right steps from wrong, and the two models' decode speed; with
    --domains, each block drafter's accepted length too. Kept in MIMO_CACHE_DIR/calibrations, where `reason` finds
    it (so a benchmark can calibrate before it times anything); printed as JSON."""
    draft, oracle = _pairing(pairing) if pairing else (None, None)
    settings = _settings(config, draft, oracle)
    draft, oracle = settings.drafter_model, settings.oracle_model
    calibration, drafters = asyncio.run(calibrate_pair(settings, draft, oracle, _options(k=k).k,
                                                       domain_words(domains, ctx.args, PROG), afresh=not if_missing))
    text = json.dumps({**calibration.to_dict(), "drafters": drafters.to_dict() if drafters else None}, indent=2)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
    print(f"{draft}:{oracle}: {calibration.reason}", file=sys.stderr)
    print(text)


def _pairing(text: str) -> tuple[str, str]:
    draft, sep, oracle = text.partition(":")
    if not sep or not draft or not oracle:
        fail(f"--pairing {text!r}: expected DRAFT:ORACLE", prog=PROG)
    return draft, oracle


@app.command(context_settings={"allow_extra_args": True})
def bench(
    ctx: typer.Context,
    n: int = typer.Option(6, "--n", min=1, help="Records in all, split over the domains (ds-benchmark suite)."),
    domains: list[str] = domains_option(["math"], "Domains of the suite: --domains math triage."),
    seed: int = typer.Option(0, "--seed", help="The suite's seed."),
    records: Optional[Path] = typer.Option(None, "--records", help="A JSONL of records with references instead."),
    pairing: list[str] = typer.Option(["smollm2-135m:qwen2.5-coder-0.5b"], "--pairing",
                                      help="DRAFT:ORACLE (repeatable)."),
    thresholds: str = typer.Option("5,7,9", "--thresholds", help="Thresholds swept, comma-separated."),
    k: int = K,
    max_steps: int = MAX_STEPS,
    max_tokens: int = typer.Option(256, "--max-tokens", help="The most completion tokens in a chain, every arm."),
    step_tokens: int = STEP_TOKENS,
    out: Path = typer.Option(Path("spec-reasoner/results/bench.json"), "--out", help="Results JSON."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="PNG of the results (default: beside --out)."),
    runs: Optional[Path] = typer.Option(None, "--runs", help="JSONL of finished runs (default: beside --out)."),
    resume: bool = typer.Option(False, "--resume", help="Keep the runs already in --runs and do only the rest."),
    config: Optional[Path] = CONFIG,
) -> None:
    """Speculative vs oracle-only on a suite, thresholds swept: accuracy, wall time, tokens, acceptance, speedup."""
    pairs = [_pairing(p) for p in pairing]
    domains = domain_words(domains, ctx.args, PROG)
    try:
        swept = [float(t) for t in thresholds.split(",")]
    except ValueError:
        fail(f"--thresholds {thresholds!r}: expected numbers separated by commas", prog=PROG)
    if any(not 0 <= t <= 9 for t in swept):
        fail("--thresholds must lie in 0..9", prog=PROG)
    options = _options(k=k, max_steps=max_steps, max_tokens=max_tokens, step_tokens=step_tokens)
    settings = _settings(config)
    runs = runs or out.with_name(out.stem + "-runs.jsonl")
    plan = Plan(pairs, swept, options, runs, resume)
    try:
        tasks = list(read_records(records.open(encoding="utf-8"))) if records else suite(n, list(domains), seed)
    except (OSError, RecordError, RuntimeError) as exc:
        fail(str(exc), prog=PROG)
    total = len(tasks) * len(pairs) * len(arms(plan.thresholds))
    with Progress(console=Console(stderr=True)) as progress:
        bar = progress.add_task("bench runs", total=total)
        try:
            done = asyncio.run(run_all(tasks, plan, settings, lambda run: progress.advance(bar)))
        except KeyboardInterrupt:
            fail(f"interrupted: the finished runs are kept in {runs}; run again with --resume", code=130, prog=PROG)
        except ContractError as exc:
            fail(f"{exc} (start afresh without --resume)", prog=PROG)
    config_used = {"n": len(tasks), "domains": sorted({t.domain for t in tasks}), "seed": seed,
                   "records": str(records) if records else "ds-benchmark suite", "pairings": pairing,
                   "thresholds": swept, "k": k, "max_steps": max_steps, "max_tokens": max_tokens,
                   "step_tokens": step_tokens, "runs": str(runs)}
    try:
        results = summarise(tasks, done, plan, config_used, settings)
    except RuntimeError as exc:
        fail(str(exc), prog=PROG)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results.to_dict(), indent=2) + "\n", encoding="utf-8")
    plot(results, plot_path or out.with_suffix(".png"))
    for arm in results.arms:
        print(f"{arm.pairing} {arm.arm}: accuracy {arm.accuracy:.2f} {arm.accuracy_ci95}, speedup {arm.speedup:.2f}x "
              f"{arm.speedup_ci95}, acceptance {arm.acceptance_rate}, time {arm.time_s}", file=sys.stderr)
    print(json.dumps(results.to_dict(), indent=2))


def main() -> None:
    """The console script."""
    run_app(app, PROG)
