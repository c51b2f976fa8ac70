"""One difficulty scale for every domain: 1 (one step: an operation, an expression, an observation) to 5 (the
domain's hardest band in the shipped suites). D/s weighs each right answer by it, so a domain on a longer scale
would outweigh the others; each suite maps its own raw measure onto 1..5 (the rule lives next to the suite) and
keeps that measure in the record's `difficulty_measure`."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass
from typing import Any, NamedTuple

from mimo_core.contract import Contract

LEVELS = (1, 2, 3, 4, 5)
FIELD = "difficulty_measure"  # the record's top-level field holding the raw measure


@dataclass(frozen=True)
class Measure(Contract):
    """A task's raw, per-domain difficulty measure, before it is mapped onto the scale."""

    name: str
    value: int | str


class Item(NamedTuple):
    """One generated task: what the model reads, the reference it is checked against, its level and raw measure."""

    task: str
    reference: dict[str, Any]
    difficulty: float
    measure: Measure


def level(value: int, upper_bounds: tuple[int, int, int, int]) -> float:
    """The level (1..5) of a count, given the largest count of levels 1 to 4; anything above the last is 5."""
    if list(upper_bounds) != sorted(set(upper_bounds)):
        raise ValueError(f"level bounds must increase strictly: {upper_bounds}")
    return float(bisect_left(upper_bounds, value) + 1)


@dataclass
class Distribution(Contract):
    """How one shipped suite's tasks spread over the scale."""

    suite: str
    measure: str
    tasks: int
    counts: dict[str, int]  # level ("1".."5") -> tasks
    mean: float


def distribution(suite: str, items: list[tuple[float, Measure]]) -> Distribution:
    """The spread of (difficulty, measure) pairs over the levels; ValueError if one lies off the scale or the
    suite mixes measures."""
    names = sorted({measure.name for _, measure in items})
    off_scale = sorted({d for d, _ in items if d not in LEVELS})
    if off_scale:
        raise ValueError(f"{suite}: difficulties off the 1..5 scale: {', '.join(f'{d:g}' for d in off_scale)}")
    if len(names) != 1:
        raise ValueError(f"{suite}: one measure expected, found {', '.join(names) or 'none'}")
    counts = Counter(int(d) for d, _ in items)
    return Distribution(suite=suite, measure=names[0], tasks=len(items),
                        counts={str(k): counts[k] for k in LEVELS},
                        mean=round(sum(d for d, _ in items) / len(items), 2))


def markdown(rows: list[Distribution]) -> str:
    """The distributions as a markdown table (the one in the README)."""
    lines = ["| suite | measure | tasks | " + " | ".join(f"level {k}" for k in LEVELS) + " | mean |",
             "|---|---|---|" + "---|" * len(LEVELS) + "---|"]
    lines += [f"| {r.suite} | `{r.measure}` | {r.tasks} | " + " | ".join(str(r.counts[str(k)]) for k in LEVELS)
              + f" | {r.mean:g} |" for r in rows]
    return "\n".join(lines)
