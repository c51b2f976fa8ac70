"""The shape every stage command shares: records from FILE or stdin, `--concurrency N`, `--config FILE.yaml`, and
an exit code (0 done, 2 bad input, 3 cannot run here); and `--domains` as repeated words in every tool."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Any, Callable, NoReturn

import typer

from .console import fail, warn
from .settings import Settings, SettingsError, load_settings


def records_argument() -> Any:
    """The FILE argument of a stage: records (JSONL), stdin when absent."""
    return typer.Argument(None, metavar="FILE", help="Records (JSONL); stdin when absent.")


def concurrency_option(help: str = "Records processed at once (default: MIMO_CONCURRENCY).") -> Any:
    """`--concurrency N`: how many records a stage keeps in flight."""
    return typer.Option(None, "--concurrency", metavar="N", min=1, help=help)


def config_option() -> Any:
    """`--config FILE.yaml`: a YAML settings file, the lowest precedence above the defaults."""
    return typer.Option(None, "--config", metavar="FILE",
                        help="YAML settings file (MIMO_* names). A flag beats the environment, which beats .env, "
                             "which beats this file.")


def domains_option(default: list[str], help: str) -> Any:
    """`--domains WORD...`: the command takes extra arguments (`allow_extra_args`) and reads them with
    `domain_words`."""
    return typer.Option(default, "--domains", metavar="DOMAIN...", help=help)


def domain_words(given: list[str], extra: list[str], prog: str) -> list[str]:
    """The words of `--domains math coding` (typer gives the first, the rest arrive as extra arguments); a
    comma-separated list, an older spelling, is split with a warning."""
    words = [*given, *extra]
    if any("," in word for word in words):
        warn("--domains takes words separated by spaces (--domains math coding); commas are deprecated", prog=prog)
        words = [part for word in words for part in word.split(",") if part]
    return words


def deprecated_model(model: str | None, old: str | None, old_flag: str, prog: str) -> str | None:
    """`--model`, or the value of its older name `old_flag`, said with a warning."""
    if old is not None:
        warn(f"{old_flag} is deprecated; use --model", prog=prog)
    return model if model is not None else old


def stage_settings(prog: str, config: Path | None, **overrides: Any) -> Settings:
    """The settings of a command: its flags (`overrides`; None is unset), the environment, .env, then `config`; a
    bad setting ends the command with one error line and exit code 2."""
    try:
        return load_settings(overrides=overrides, config_file=config)
    except SettingsError as exc:
        fail(str(exc), prog=prog)


def run_stage_command(prog: str, file: Path | None, run: Callable[[IO[str]], int]) -> NoReturn:
    """Run a stage over FILE (stdin when None) and exit with the stage's code: 0 done, 2 bad input (a line that is
    not a record, after the records before it were written; a FILE that cannot be read), 3 cannot run here."""
    try:
        source = open(file, encoding="utf-8") if file else sys.stdin
    except OSError as exc:
        fail(f"{file}: {exc.strerror or exc}", prog=prog)
    with source:
        raise typer.Exit(run(source))
