"""What every tool's CLI shares for talking to a person: a one-line error and an exit code that says so."""

from __future__ import annotations

import sys
from importlib import metadata
from typing import Any, NoReturn

import typer

EXIT_BAD_INPUT = 2


def fail(message: str, code: int = EXIT_BAD_INPUT, prog: str | None = None) -> NoReturn:
    """Print `[prog: ]error: message` as one line on stderr and exit with `code` (2: bad input)."""
    prefix = f"{prog}: " if prog else ""
    print(f"{prefix}error: {message}", file=sys.stderr)
    sys.exit(code)  # SystemExit, not typer.Exit: this also runs outside a command, as in a CLI's main()


def version_option(distribution: str) -> Any:
    """A `--version` option printing `distribution VERSION` (from the installed package's metadata) and exiting;
    for a single-command CLI, whose function takes it as a parameter."""

    def show_version(value: bool) -> None:
        if value:
            print(f"{distribution} {metadata.version(distribution)}")
            raise typer.Exit()

    return typer.Option(False, "--version", callback=show_version, is_eager=True, help="Show the version and exit.")


def add_version_option(app: typer.Typer, distribution: str) -> None:
    """Give a typer app of several commands `--version` (see `version_option`)."""

    @app.callback()
    def _options(version: bool = version_option(distribution)) -> None:
        pass
