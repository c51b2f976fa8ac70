"""Another tool of the project as a command: found beside the running interpreter, run, its output or one line of
why not. Tools meet through JSON and their command lines, never by importing each other."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


class ToolError(RuntimeError):
    """A tool is not installed, or its command failed; the message is one line."""


def tool_command(name: str) -> str:
    """The path of the console script `name` of this environment (beside the running python), else from PATH."""
    # The console scripts of this environment first, so that a tool started from a venv's python stays in it.
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        raise ToolError(f"{name} is not installed (pip install -e ./{name})")
    return found


def run_tool(name: str, *args: str, stdin: str | None = None) -> str:
    """Run `name ARGS` with `stdin`; its stdout, or ToolError naming the command, its exit code and the last line it
    wrote on stderr."""
    done = subprocess.run([tool_command(name), *args], input=stdin, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["it said nothing on stderr"])[-1]
        raise ToolError(f"{name} {args[0] if args else ''} failed (exit {done.returncode}): {tail}")
    return done.stdout
