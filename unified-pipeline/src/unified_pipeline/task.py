"""One task through the pipe: the record a user's question becomes, and its run."""

from __future__ import annotations

import hashlib
import re
from typing import IO, Any

from mimo_core.record import DOMAINS, TaskRecord, TraceEntry

from .pipe import STAGES, PipeError, run_pipe


def reference_of(domain: str, text: str | None) -> dict[str, Any] | None:
    """The `reference` section for a user's expected answer: math and general by value or text, triage by ESI
    level. Coding is checked by tests, which a one-line reference cannot give: ValueError."""
    if text is None:
        return None
    if domain == "triage":
        level = text.strip().upper().removeprefix("ESI").strip()
        if level not in {"1", "2", "3", "4", "5"}:
            raise ValueError(f"--reference {text!r}: a triage reference is an ESI level, 1 to 5")
        return {"level": int(level)}
    if domain == "coding":
        raise ValueError("--reference: coding answers are checked by tests, which a reference text cannot give "
                         "(run_benchmark.py runs HumanEval's)")
    return {"answer": text}


def task_record(task: str, domain: str, reference: str | None = None, disabled: list[str] | None = None) -> TaskRecord:
    """The record of one task, its id derived from its text; ValueError on an empty task or an unknown domain."""
    if not task.strip():
        raise ValueError("--task is empty")
    if domain not in DOMAINS:
        raise ValueError(f"--domain {domain!r}: one of {', '.join(DOMAINS)}")
    digest = hashlib.sha256(f"{domain}\n{task}".encode()).hexdigest()[:10]
    return TaskRecord(id=f"task-{digest}", domain=domain, task=task, reference=reference_of(domain, reference),
                      config={"disabled": list(disabled or [])})


def run_task(record: TaskRecord, env: dict[str, str], stderr: IO[str]) -> TaskRecord:
    """The record after the whole pipe; PipeError when the pipe fails or loses it."""
    out = list(run_pipe([record], env, stderr))
    if len(out) != 1:
        raise PipeError(f"the pipe wrote {len(out)} records for 1")
    return out[0]


def stage_errors(error: str | None) -> dict[str, str]:
    """The record's `error` by the stage that wrote each part (`run_stage` writes `STAGE: Type: message` and joins
    several with "; "); any text before the first stage name is kept under the empty key."""
    names = "|".join(re.escape(name) for name, _ in STAGES)
    parts = re.split(rf"(?:^|; )({names}): ", error or "")
    found = {"": parts[0]} if parts[0].strip() else {}
    for stage, message in zip(parts[1::2], parts[2::2]):
        found[stage] = f"{found[stage]}; {message}" if stage in found else message
    return found


def _trace(entry: TraceEntry) -> str:
    where = " ".join(str(part) for part in (entry.provenance.get("backend"), entry.provenance.get("endpoint")) if part)
    return (f"trace: {entry.status} after {entry.wall_s:.2f} s, {entry.calls} model calls, "
            f"{entry.prompt_tokens}/{entry.completion_tokens} tokens in/out{', ' + where if where else ''}")


def failure(record: TaskRecord) -> str | None:
    """Why a record that came out of the pipe is not a clean success, in one line: whether an answer came out, each
    failed stage with its error and its trace entry, and any part of the record's error no failed stage accounts
    for; None when no stage failed and the record has no error."""
    failed = [entry for entry in record.trace if entry.status == "error"]
    if not failed and record.error is None:
        return None
    errors = stage_errors(record.error)
    said = [f"{entry.stage} failed: {errors.pop(entry.stage, 'it wrote no error')} ({_trace(entry)})"
            for entry in failed]
    if errors:
        said.append("the record's error: " + "; ".join(f"{stage}: {text}" if stage else text
                                                       for stage, text in errors.items()))
    # An answer computed past a failed stage is shown, but it is not what the pipeline was asked to compute.
    outcome = "no answer" if record.answer is None else "the answer came out past a failed stage"
    return f"{outcome}: " + "; ".join(said)
