"""`ds-benchmark sandbox`: run model-written programs by behaviour for another tool, one JSON line in, one out.

A tool that must run code (the orchestrator judging candidate programs) calls this command instead of importing
ds_benchmark: stdin carries `{"id": ..., "source": "<program>", "limits": {...}}` per line (`limits` optional, each
figure bounded by `Limits.MAXIMA`), stdout gets one `mimo.sandbox/1` result per request, in order, flushed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Literal

from mimo_core.console import EXIT_BAD_INPUT, error_line
from mimo_core.contract import Contract, ContractError

from .sandbox import EXIT_NO_SANDBOX, Limits, SandboxUnavailable, require_sandbox, run_python

Status = Literal["passed", "failed", "timed out", "error"]


@dataclass
class SandboxRequest(Contract):
    """One program to run."""

    id: str | int
    source: str
    limits: Limits | None = None


@dataclass
class SandboxResult(Contract):
    """How it ran: `passed` (exit 0), `failed`, `timed out`, or `error` when no sandbox works here (`detail` says why).

    `output` is the tail of its stdout and stderr together, with the caller's secrets scrubbed."""

    SCHEMA = "mimo.sandbox/1"

    id: str | int
    status: Status
    output: str
    exit_code: int | None
    isolation: str | None
    wall_s: float
    detail: str


def run_request(request: SandboxRequest) -> SandboxResult:
    """Run one request's program in the sandbox; SandboxUnavailable when there is none."""
    require_sandbox()
    result = run_python(request.source, request.limits or Limits())
    return SandboxResult(id=request.id, status=result.status, output=result.output,  # type: ignore[arg-type]
                         exit_code=result.exit_code, isolation=result.isolation, wall_s=result.wall_s,
                         detail=result.detail)


def run_requests(source: Iterable[str], sink: IO[str]) -> int:
    """Answer each request line of `source` on `sink`; the exit code: 2 at a bad line (after the results before it),
    EXIT_NO_SANDBOX when no sandbox works here (every result is then an `error`, said once on stderr), else 0."""
    unavailable = False
    for number, line in enumerate(source, 1):
        if not line.strip():
            continue
        try:
            request = SandboxRequest.from_json(line, "")
        except ContractError as exc:
            print(error_line("ds-benchmark", f"line {number}: {exc}"), file=sys.stderr)
            return EXIT_BAD_INPUT
        try:
            result = run_request(request)
        except SandboxUnavailable as exc:
            if not unavailable:
                print(f"sandbox: {exc}; no program is run", file=sys.stderr)
            unavailable = True
            result = SandboxResult(request.id, "error", "", None, None, 0.0, str(exc))
        sink.write(json.dumps(result.to_dict()) + "\n")
        sink.flush()
    return EXIT_NO_SANDBOX if unavailable else 0
