"""What every tool's CLI shares for talking to a person: one form of error line, `TOOL: error: WHAT`, on stderr, and an
exit code that says what happened (0 done, 1 could not finish, 2 bad input, 3 cannot run here, 130 interrupted),
and JSON on stdout."""

from __future__ import annotations

import json
import sys
from importlib import metadata
from typing import Any, NoReturn

import typer

from .settings import SettingsError

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CANNOT_RUN = 3  # what the command needs does not work on this machine (no sandbox)
EXIT_INTERRUPTED = 130


def cli_app(**options: Any) -> typer.Typer:
    """A typer app as every tool's CLI has it: plain help text (rich markup would eat `[default: 30]` and show flags
    as taking `<bool>`), no shell-completion commands, no framed tracebacks."""
    return typer.Typer(**{"add_completion": False, "rich_markup_mode": None, "pretty_exceptions_enable": False,
                          **options})


def error_line(prog: str, message: str) -> str:
    """The one form every tool says an error in: `prog: error: message`, on one line."""
    return f"{prog}: error: {' '.join(str(message).split())}"


def print_json(data: Any) -> None:
    """Write `data` to stdout as indented JSON and flush, so a pipe's next tool gets it at once."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


def warn(message: str, *, prog: str) -> None:
    """Print `prog: warning: message` as one line on stderr (a deprecated spelling that still works)."""
    print(f"{prog}: warning: {' '.join(str(message).split())}", file=sys.stderr)


def fail(message: str, code: int = EXIT_BAD_INPUT, *, prog: str) -> NoReturn:
    """Print `prog: error: message` as one line on stderr and exit with `code` (2: bad input)."""
    print(error_line(prog, message), file=sys.stderr)
    sys.exit(code)  # SystemExit, not typer.Exit: this also runs outside a command, as in a CLI's main()


def run_app(app: typer.Typer, prog: str) -> NoReturn:
    """Run a typer app as the console script `prog`: a usage error, a bad setting or Ctrl-C ends in one error line
    (exit 2, 2, 130) instead of a traceback or a framed box; the command's own exit code otherwise."""
    try:
        code = app(standalone_mode=False, prog_name=prog)
    except typer.TyperException as exc:  # a usage error: a bad option value, an unknown command, a missing file
        if exc.format_message():
            fail(exc.format_message(), prog=prog)
        sys.exit(EXIT_BAD_INPUT)  # the bare command: its help has been shown
    except SettingsError as exc:
        fail(str(exc), prog=prog)
    except (KeyboardInterrupt, typer.Abort):
        fail("interrupted", EXIT_INTERRUPTED, prog=prog)
    sys.exit(code if isinstance(code, int) else 0)


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
