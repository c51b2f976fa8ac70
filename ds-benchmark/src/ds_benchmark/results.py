"""The `mimo.results/1` contract: a benchmark's figures per configuration, with every record's outcome."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SCHEMA = "mimo.results/1"


class ResultsError(ValueError):
    """A results file that cannot be used; the message is one line."""


class _Contract:
    """to_dict / from_dict for the flat dataclasses below; nested ones convert their parts themselves."""

    def to_dict(self) -> dict[str, Any]:
        """The object as JSON-safe values."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def _values(cls, data: Any, where: str) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise ResultsError(f"{where} must be an object")
        missing = [f.name for f in fields(cls) if f.name not in data and f.name != "schema"]  # type: ignore[arg-type]
        if missing:
            raise ResultsError(f"{where} is missing {', '.join(missing)}")
        return {f.name: data[f.name] for f in fields(cls) if f.name in data}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: Any, where: str = "results"):
        """The object from its dict; ResultsError says what is missing."""
        return cls(**cls._values(data, where))


@dataclass
class Outcome(_Contract):
    """What the figures need of one scored record."""

    id: str
    domain: str
    difficulty: float
    correct: bool
    confidence: float | None
    score: float  # s_i under the results' formula
    overconfident_wrong: bool
    latency_s: float | None  # this record's first stage start to its last stage end
    prompt_tokens: int
    completion_tokens: int
    error: str | None
    detail: str


@dataclass
class Figures(_Contract):
    """The figures of a set of outcomes over a wall-clock time."""

    n: int
    correct: int
    accuracy: float | None
    accuracy_ci95: list[float] | None
    weighted_accuracy: float | None
    ds: float
    ds_ci95: list[float] | None
    overconfident_wrong: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    tokens_per_s: float  # completion tokens per wall-clock second: the speed the pipeline is built for
    latency_s: dict[str, float | None]
    wall_s: float


@dataclass
class Configuration(_Contract):
    """One configuration of a run (the components it had disabled) and its figures: overall, per domain, per stage."""

    name: str
    disabled: list[str]
    figures: Figures
    domains: dict[str, Figures]
    stages: dict[str, dict[str, Any]]
    outcomes: list[Outcome]

    @classmethod
    def from_dict(cls, data: Any, where: str = "configuration") -> Configuration:
        """A configuration with its nested figures and outcomes."""
        values = cls._values(data, where)
        values["figures"] = Figures.from_dict(values["figures"], f"{where}.figures")
        values["domains"] = {k: Figures.from_dict(v, f"{where}.domains.{k}") for k, v in values["domains"].items()}
        values["outcomes"] = [Outcome.from_dict(o, f"{where}.outcomes[{i}]") for i, o in enumerate(values["outcomes"])]
        return cls(**values)


@dataclass
class Results(_Contract):
    """A benchmark run: which tasks, where it ran, and each configuration's figures."""

    suite: dict[str, Any]  # name, n, digest of the tasks and their references
    seed: int | None
    task_ids: list[str]
    formula: str
    environment: dict[str, Any]
    configurations: list[Configuration]
    created_at: float
    schema: str = field(default=SCHEMA)

    @classmethod
    def from_dict(cls, data: Any, where: str = "results") -> Results:
        """Results from their dict; an unknown schema is refused."""
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            schema = data.get("schema") if isinstance(data, dict) else None
            raise ResultsError(f"unknown results schema {schema!r} (expected {SCHEMA!r})")
        values = cls._values(data, where)
        values["configurations"] = [Configuration.from_dict(c, f"configurations[{i}]")
                                    for i, c in enumerate(values["configurations"])]
        return cls(**values)


def load_results(path: str | Path) -> Results:
    """Read and validate a results file; ResultsError (one line, naming the file) if it cannot be used."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return Results.from_dict(data)
    except (OSError, ValueError, TypeError, AttributeError) as exc:  # JSONDecodeError and ResultsError are ValueErrors
        raise ResultsError(f"{path}: {exc}".splitlines()[0]) from None
