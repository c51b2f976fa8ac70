"""Code answers vote by behaviour: two programs agree when they give the same results on the problem's own examples.

The examples are the calls written in the task's docstring (`>>> f(2)`, `f(2) == 4`, `f(2) ➞ 4`); the expected
values written beside them are not used, since a docstring may be wrong and the vote is about agreement. Programs
run only in ds-benchmark's sandbox, called as a subprocess (`ds-benchmark sandbox`: JSON lines in and out).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import subprocess
from collections.abc import Sequence

from mimo_core.console import EXIT_CANNOT_RUN
from mimo_core.tools import ToolError, tool_command

MAX_EXAMPLES = 10
MAX_REPR = 200  # characters of each result kept: the sandbox returns only the tail of a program's output
SANDBOX_TIMEOUT_S = 120.0
_DEF_RE = re.compile(r"^def\s+([A-Za-z_]\w*)\s*\(", re.MULTILINE)
_DOCTEST_RE = re.compile(r"^\s*>>>\s*(.+?)\s*$", re.MULTILINE)

HARNESS = """
import json as _json
_results = []
for _expr in {examples!r}:
    try:
        _results.append(repr(eval(_expr))[:{max_repr}])
    except BaseException as _exc:
        _results.append("raised " + type(_exc).__name__)
print({marker!r} + _json.dumps(_results))
"""


class SandboxMissing(RuntimeError):
    """`ds-benchmark sandbox` is not installed or does not run here."""


def entry_point(task: str) -> str | None:
    """The name of the function the task asks for: the last `def` in it."""
    names = _DEF_RE.findall(task)
    return names[-1] if names else None


def _call_at(text: str, start: int) -> str | None:
    """The call expression `name(...)` starting at `start`, brackets balanced, or None if they never close."""
    depth = 0
    for i in range(text.index("(", start), len(text)):
        depth += {"(": 1, ")": -1, "[": 1, "]": -1, "{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start : i + 1]
    return None


def examples(task: str) -> list[str]:
    """The example calls of the task's function, from its docstring: doctest lines first, then `f(...)` calls."""
    name = entry_point(task)
    if name is None:
        return []
    found = [expr for expr in _DOCTEST_RE.findall(task) if name in expr]
    body = task.find("\n", task.rfind(f"def {name}"))  # the docstring: after the signature's line
    for match in re.finditer(rf"(?<![\w.]){re.escape(name)}\s*\(", task[body:] if body >= 0 else ""):
        call = _call_at(task, body + match.start())
        if call and "\n" not in call.strip() and not any(call in expr for expr in found):
            found.append(call)
    return list(dict.fromkeys(found))[:MAX_EXAMPLES]


def probe_program(task: str, code: str, calls: Sequence[str], marker: str) -> str:
    """The program that defines the answer (after the task's own imports and helpers) and prints its results."""
    return f"{task}\n{code}\n{HARNESS.format(examples=list(calls), max_repr=MAX_REPR, marker=marker)}"


def sandbox_command() -> list[str]:
    """The `ds-benchmark sandbox` command of this installation."""
    try:
        return [tool_command("ds-benchmark"), "sandbox"]
    except ToolError as exc:
        raise SandboxMissing(str(exc)) from None


def run_in_sandbox(sources: dict[str, str], timeout_s: float = SANDBOX_TIMEOUT_S) -> dict[str, dict]:
    """Run programs through `ds-benchmark sandbox`; its result line per id ({"status", "output", ...})."""
    lines = "".join(json.dumps({"id": key, "source": source}) + "\n" for key, source in sources.items())
    try:
        done = subprocess.run(sandbox_command(), input=lines, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxMissing(f"ds-benchmark sandbox did not run: {exc}") from None
    results = {}
    for line in done.stdout.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("id") in sources:
            results[row["id"]] = row
    if done.returncode == EXIT_CANNOT_RUN or (done.returncode != 0 and not results):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SandboxMissing(f"ds-benchmark sandbox failed (exit {done.returncode}): {tail[:200]}")
    return results


def behaviour_key(result: dict | None, marker: str) -> str | None:
    """The vote key of one run: a digest of the results it printed; None when it printed none (it did not run)."""
    output = (result or {}).get("output") or ""
    printed = [line[len(marker):] for line in output.splitlines() if line.startswith(marker)]
    if not printed:
        return None
    return "behaviour:" + hashlib.sha256(printed[-1].encode()).hexdigest()[:12]


def behaviour_keys(task: str, programs: Sequence[str]) -> dict[str, str | None] | None:
    """Each distinct program's behaviour key on the task's examples; None when the task has no examples."""
    calls = examples(task)
    if not calls or not programs:
        return None
    # A fresh marker per call: a program cannot print a result line for another that it has never seen.
    marker = f"@@behaviour-{secrets.token_hex(8)}@@"
    distinct = list(dict.fromkeys(programs))
    ids = {f"p{i}": code for i, code in enumerate(distinct)}
    results = run_in_sandbox({pid: probe_program(task, code, calls, marker) for pid, code in ids.items()})
    return {code: behaviour_key(results.get(pid), marker) for pid, code in ids.items()}
