"""The task record (`mimo.task/1`) every tool reads and writes, and its JSONL stream."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import IO, Any, Iterable, Iterator, Literal

from .contract import Contract, ContractError
from .served import Served

SCHEMA = "mimo.task/1"
DOMAINS = ("math", "coding", "triage", "general")
SECTIONS = ("precision", "kv", "reasoning", "consensus", "verdict")
# The components an ablation can switch off (`config.disabled`); each is a pipeline stage and its folder.
COMPONENTS = ("precision-router", "tiered-kv-cache", "spec-reasoner", "multi-agent-orchestrator")
TraceStatus = Literal["ok", "baseline", "error"]


class RecordError(ContractError):
    """Input that is not a valid record; the reader's message is `line N: reason`."""


@dataclass
class TraceEntry(Contract):
    """One stage's pass over one record: when, how long, how many model calls and tokens, and where it ran.

    `provenance` says where the work happened (backend, endpoint, models, versions, machine), so that a report
    made later, elsewhere, describes the run and not the machine that writes the report. `served` is the evidence
    of the record's plan: what the stage's calls were actually served (`mimo_core.served`)."""

    stage: str
    status: TraceStatus
    started_at: float
    ended_at: float
    wall_s: float
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)
    served: Served | None = None  # what the stage's calls got back; None when it made none


@dataclass
class TaskRecord(Contract):
    """A task travelling down the pipe; each stage fills its own section and passes the rest through.

    Fields no stage owns are kept in `extra` and written back untouched; an integer id stays an integer."""

    SCHEMA = SCHEMA
    EXTRA = "keep"

    id: str | int
    domain: Literal["math", "coding", "triage", "general"]
    task: str
    difficulty: float = 1.0
    reference: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    precision: dict[str, Any] = field(default_factory=dict)
    kv: dict[str, Any] = field(default_factory=dict)
    reasoning: dict[str, Any] = field(default_factory=dict)
    consensus: dict[str, Any] = field(default_factory=dict)
    verdict: dict[str, Any] = field(default_factory=dict)
    trace: list[TraceEntry] = field(default_factory=list)
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.id == "":
            raise ValueError("'id' must not be empty")
        if not math.isfinite(self.difficulty) or self.difficulty < 0:
            raise ValueError("'difficulty' must be a finite number >= 0")
        disabled = self.config.get("disabled", [])
        if not isinstance(disabled, list) or not all(isinstance(name, str) for name in disabled):
            raise ValueError("'config.disabled' must be a list of component names")
        unknown = [name for name in disabled if name not in COMPONENTS]
        if unknown:
            raise ValueError(f"config.disabled names no component {', '.join(map(repr, unknown))} "
                             f"(components: {', '.join(COMPONENTS)})")

    @property
    def disabled(self) -> list[str]:
        """The components switched off for this record (the ablation)."""
        return list(self.config.get("disabled", []))

    @property
    def answer(self) -> str | None:
        """The record's final answer: `consensus.answer`."""
        return self.consensus.get("answer")

    @classmethod
    def from_dict(cls, data: Any, where: str | None = None) -> "TaskRecord":
        """A record from its dict; `schema` may be left out (a record written by hand), any other is refused."""
        if isinstance(data, dict) and "schema" not in data:
            data = {"schema": SCHEMA, **data}
        if isinstance(data, dict) and data.get("schema") == SCHEMA:
            for key in ("precision", "kv", "reasoning", "consensus", "verdict", "config", "trace"):
                if data.get(key) is None and key in data:  # null sections are empty ones
                    data = {**data, key: [] if key == "trace" else {}}
        try:
            return super().from_dict(data, where or "")
        except RecordError:
            raise
        except ContractError as exc:
            raise RecordError(str(exc)) from None


def parse_record(line: str, line_no: int) -> TaskRecord:
    """One JSONL line as a record, or a RecordError `line N: reason`."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RecordError(f"line {line_no}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise RecordError(f"line {line_no}: JSON nested too deeply") from None
    try:
        return TaskRecord.from_dict(data)
    except RecordError as exc:
        raise RecordError(f"line {line_no}: {exc}") from None


def read_records(stream: IO[str] | Iterable[str]) -> Iterator[TaskRecord]:
    """Records from a JSONL stream, lazily; blank lines are skipped, a bad line raises `line N: reason`."""
    for line_no, line in enumerate(stream, start=1):
        if line.strip():
            yield parse_record(line, line_no)


def write_record(record: TaskRecord, stream: IO[str]) -> None:
    """Write one record as one JSON line and flush, so the next tool in the pipe sees it at once."""
    stream.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
    stream.flush()
