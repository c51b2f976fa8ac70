"""One task through the pipe: the record a user's question becomes, and its run."""

from __future__ import annotations

import hashlib
from typing import IO, Any

from mimo_core.record import DOMAINS, TaskRecord

from .pipe import PipeError, run_pipe


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
