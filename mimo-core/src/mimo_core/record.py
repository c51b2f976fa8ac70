"""The task record (`mimo.task/1`) every tool reads and writes, and its JSONL stream."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import IO, Any, Iterable, Iterator

SCHEMA = "mimo.task/1"
DOMAINS = ("math", "coding", "triage", "general")
SECTIONS = ("precision", "kv", "reasoning", "consensus", "verdict")
TRACE_STATUSES = ("ok", "baseline", "error")


class RecordError(ValueError):
    """Input that is not a valid record; the reader's message is `line N: reason`."""


@dataclass
class TraceEntry:
    """One stage's pass over one record: when, how long, how many model calls and tokens."""

    stage: str
    status: str
    started_at: float
    ended_at: float
    wall_s: float
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "status": self.status,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "wall_s": self.wall_s,
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }

    @classmethod
    def from_dict(cls, data: Any) -> "TraceEntry":
        if not isinstance(data, dict):
            raise RecordError("a trace entry must be an object")
        try:
            entry = cls(
                stage=str(data["stage"]),
                status=str(data["status"]),
                started_at=float(data["started_at"]),
                ended_at=float(data["ended_at"]),
                wall_s=float(data.get("wall_s", float(data["ended_at"]) - float(data["started_at"]))),
                calls=int(data.get("calls", 0)),
                prompt_tokens=int(data.get("prompt_tokens", 0)),
                completion_tokens=int(data.get("completion_tokens", 0)),
            )
        except KeyError as exc:
            raise RecordError(f"trace entry is missing {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise RecordError(f"trace entry has a bad value: {exc}") from None
        if entry.status not in TRACE_STATUSES:
            raise RecordError(f"trace status {entry.status!r} is not one of {', '.join(TRACE_STATUSES)}")
        return entry


@dataclass
class TaskRecord:
    """A task travelling down the pipe; each stage fills its own section and passes the rest through."""

    id: str
    domain: str
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
    extra: dict[str, Any] = field(default_factory=dict)  # fields no stage owns, passed through untouched
    schema: str = SCHEMA

    @property
    def disabled(self) -> list[str]:
        """The components switched off for this record (the ablation)."""
        return list(self.config.get("disabled") or [])

    @property
    def answer(self) -> str | None:
        """The record's final answer: `consensus.answer`."""
        return self.consensus.get("answer")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": self.schema,
            "id": self.id,
            "domain": self.domain,
            "task": self.task,
            "difficulty": self.difficulty,
            "reference": self.reference,
            "config": self.config,
        }
        out.update({name: getattr(self, name) for name in SECTIONS})
        out["trace"] = [entry.to_dict() for entry in self.trace]
        out["error"] = self.error
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> "TaskRecord":
        if not isinstance(data, dict):
            raise RecordError("a record must be a JSON object")
        schema = data.get("schema", SCHEMA)
        if schema != SCHEMA:
            raise RecordError(f"unknown schema {schema!r} (expected {SCHEMA!r})")
        for key in ("id", "task", "domain"):
            if key not in data:
                raise RecordError(f"missing {key!r}")
        if not isinstance(data["id"], (str, int)) or data["id"] == "":
            raise RecordError("'id' must be a non-empty string")
        if not isinstance(data["task"], str):
            raise RecordError("'task' must be a string")
        if data["domain"] not in DOMAINS:
            raise RecordError(f"domain {data['domain']!r} is not one of {', '.join(DOMAINS)}")
        try:
            difficulty = float(data.get("difficulty", 1.0))
        except (TypeError, ValueError):
            raise RecordError("'difficulty' must be a number") from None
        for name in ("config", *SECTIONS):
            if not isinstance(data.get(name) or {}, dict):
                raise RecordError(f"{name!r} must be an object")
        if data.get("reference") is not None and not isinstance(data["reference"], dict):
            raise RecordError("'reference' must be an object")
        if not isinstance(data.get("trace") or [], list):
            raise RecordError("'trace' must be a list")
        if not isinstance(data.get("config", {}).get("disabled") or [], list):
            raise RecordError("'config.disabled' must be a list of component names")
        known = {"schema", "id", "domain", "task", "difficulty", "reference", "config", "trace", "error", *SECTIONS}
        return cls(
            id=str(data["id"]),
            domain=data["domain"],
            task=data["task"],
            difficulty=difficulty,
            reference=data.get("reference"),
            config=dict(data.get("config") or {}),
            trace=[TraceEntry.from_dict(entry) for entry in data.get("trace") or []],
            error=data.get("error"),
            extra={k: v for k, v in data.items() if k not in known},
            **{name: dict(data.get(name) or {}) for name in SECTIONS},
        )


def parse_record(line: str, line_no: int) -> TaskRecord:
    """One JSONL line as a record, or a RecordError `line N: reason`."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RecordError(f"line {line_no}: not valid JSON ({exc.msg} at column {exc.colno})") from None
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
