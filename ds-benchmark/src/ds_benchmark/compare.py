"""`compare A B`: two results files side by side, tasks paired by id, deltas with paired bootstrap intervals.

The one compare of the project: `ds-benchmark compare` and unified-pipeline's `compare_benchmarks.py` both read,
compare and print through `compare_files` and `print_comparison`."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from mimo_core.console import print_json
from mimo_core.contract import Contract
from mimo_core.stats import bootstrap_interval

from .results import MECHANISMS, ComponentImpact, Configuration, Results

DELTAS = ("ds", "accuracy", "weighted_accuracy", "overconfident_wrong", "errors", "tokens_per_s", "wall_s",
          *MECHANISMS)


@dataclass
class ConfigurationDelta(Contract):
    """One configuration of run A against its namesake in run B: both figures, B - A, paired 95% intervals."""

    a: str
    b: str
    paired_tasks: int
    only_in_a: int
    only_in_b: int
    a_figures: dict[str, float | None]
    b_figures: dict[str, float | None]
    delta: dict[str, float | None]
    delta_ci95: dict[str, list[float] | None]


@dataclass
class Comparison(Contract):
    """`compare A B`: whether the runs can be compared fairly (and why not), and each shared configuration's delta."""

    SCHEMA = "mimo.comparison/1"

    comparable: bool
    reasons: list[str]
    configurations: list[ConfigurationDelta]


def comparability(a: Results, b: Results) -> list[str]:
    """Why the two runs cannot be compared fairly, each reason saying what differs; empty when they can."""
    reasons = []
    if a.suite.get("digest") != b.suite.get("digest"):
        reasons.append(f"different suites: {_suite_difference(a, b)}")
    else:
        reasons += _difficulty_difference(a, b)
    if a.seed != b.seed:
        reasons.append(f"different seeds ({a.seed} vs {b.seed})")
    models_a, models_b = a.environment.get("models"), b.environment.get("models")
    if models_a != models_b:
        reasons.append(f"different models ({_names(models_a)} vs {_names(models_b)})")
    if a.formula != b.formula:
        reasons.append(f"different D/s formulas ({a.formula} vs {b.formula})")
    return reasons


def _suite_difference(a: Results, b: Results) -> str:
    """What tells two suites apart, in a user's words: their names, sizes or task ids, else their content."""
    parts = []
    if a.suite.get("name") != b.suite.get("name"):
        parts.append(f"{a.suite.get('name')} vs {b.suite.get('name')}")
    ids_a, ids_b = set(a.task_ids), set(b.task_ids)
    if len(ids_a) != len(ids_b):
        parts.append(f"{len(ids_a)} tasks vs {len(ids_b)}")
    elif ids_a != ids_b:
        parts.append(f"other task ids ({len(ids_a - ids_b)} of {len(ids_a)} in one run only)")
    elif not parts:
        # Same ids (a suite numbers its tasks math-0000, ...), other tasks: another seed or source drew them.
        parts.append(f"the same {len(ids_a)} task ids hold different tasks or references")
    return ", ".join(parts)


def _difficulty_difference(a: Results, b: Results) -> list[str]:
    """The same tasks weighed differently (a run made before the difficulty scale changed): D/s would not compare."""
    weights_a = {o.id: o.difficulty for c in a.configurations for o in c.outcomes}
    weights_b = {o.id: o.difficulty for c in b.configurations for o in c.outcomes}
    differ = sorted(i for i in weights_a.keys() & weights_b.keys() if weights_a[i] != weights_b[i])
    if not differ:
        return []
    first = differ[0]
    return [f"different difficulties: {len(differ)} of {len(weights_a.keys() & weights_b.keys())} tasks weigh "
            f"differently ({first}: {weights_a[first]:g} vs {weights_b[first]:g})"]


def _names(models: Any) -> str:
    return ", ".join(map(str, models)) if isinstance(models, list) and models else "none recorded"


def _pairs(a: Results, b: Results) -> list[tuple[Configuration, Configuration]]:
    by_name = {c.name: c for c in b.configurations}
    pairs = [(c, by_name[c.name]) for c in a.configurations if c.name in by_name]
    if not pairs and len(a.configurations) == len(b.configurations) == 1:
        pairs = [(a.configurations[0], b.configurations[0])]
    return pairs


def compare_configurations(a: Configuration, b: Configuration, seed: int = 0) -> ConfigurationDelta:
    """B minus A for each figure, and paired bootstrap intervals for the D/s and accuracy deltas over shared tasks."""
    a_by_id = {o.id: o for o in a.outcomes}
    shared = [(a_by_id[o.id], o) for o in b.outcomes if o.id in a_by_id]
    # columns: difficulty * s_i under A, the same under B, correct under A, correct under B
    table = np.array([[x.difficulty * x.score, y.difficulty * y.score, x.correct is True, y.correct is True]
                      for x, y in shared],
                     dtype=float).reshape(-1, 4)
    wall_a, wall_b = a.figures.wall_s, b.figures.wall_s
    fa, fb = {**a.figures.to_dict(), **a.mechanism()}, {**b.figures.to_dict(), **b.mechanism()}
    return ConfigurationDelta(
        a=a.name,
        b=b.name,
        paired_tasks=len(shared),
        only_in_a=len(a_by_id) - len(shared),
        only_in_b=len(b.outcomes) - len(shared),
        a_figures={k: fa[k] for k in DELTAS},
        b_figures={k: fb[k] for k in DELTAS},
        delta={k: None if fa[k] is None or fb[k] is None else round(fb[k] - fa[k], 6) for k in DELTAS},
        delta_ci95={
            "ds": bootstrap_interval(table, lambda t: t[..., 1].sum(-1) / wall_b - t[..., 0].sum(-1) / wall_a, seed),
            "accuracy": bootstrap_interval(table, lambda t: t[..., 3].mean(-1) - t[..., 2].mean(-1), seed),
        },
    )


def compare(a: Results, b: Results) -> Comparison:
    """The comparison of two runs: whether they are comparable, and B - A for each configuration they share."""
    reasons = comparability(a, b)
    seed = a.seed if isinstance(a.seed, int) else 0
    return Comparison(comparable=not reasons, reasons=reasons,
                      configurations=[compare_configurations(x, y, seed) for x, y in _pairs(a, b)])


def compare_files(a: Path, b: Path) -> tuple[Results, Results, Comparison]:
    """Both results files, read and validated, and their comparison; ContractError names a file that cannot be used."""
    first, second = Results.load(a), Results.load(b)
    return first, second, compare(first, second)


def print_comparison(comparison: Comparison, runs: dict[str, Results], tables: bool = True) -> None:
    """The output of both compare commands: the comparison JSON on stdout, and with `tables` its table and the
    component impact table of each run (name -> results) that has one on stderr. On a terminal the tables alone go
    to stdout: a person reads them, a pipe gets the JSON."""
    if tables and sys.stdout.isatty():
        _print_tables(Console(), comparison, runs)
        return
    print_json(comparison.to_dict())
    if tables:
        _print_tables(Console(stderr=True), comparison, runs)


def _print_tables(console: Console, comparison: Comparison, runs: dict[str, Results]) -> None:
    console.print(table(comparison))
    for name, results in runs.items():
        if results.impact:
            console.print(impact_table(results.impact, title=f"component impact of {name}"))


def component_impact(results: Results) -> list[ComponentImpact]:
    """The component impact table of an ablation run: for each configuration with exactly one component switched
    off, the full pipeline's D/s minus its own, with the paired bootstrap interval, largest drop first. Empty when
    the run has no full configuration or no such configuration."""
    full = next((c for c in results.configurations if not c.disabled), None)
    seed = results.seed if isinstance(results.seed, int) else 0
    rows = []
    for without in (c for c in results.configurations if full is not None and len(c.disabled) == 1):
        delta = compare_configurations(without, full, seed)  # full - without
        rows.append(ComponentImpact(
            component=without.disabled[0],
            ds_full=full.figures.ds,
            ds_without=without.figures.ds,
            ds_drop=delta.delta["ds"] or 0.0,
            ds_drop_ci95=delta.delta_ci95["ds"],
            accuracy_drop=delta.delta["accuracy"],
            tokens_per_s_drop=delta.delta["tokens_per_s"] or 0.0,
            paired_tasks=delta.paired_tasks,
            mechanism_full=full.mechanism(),
            mechanism_without=without.mechanism(),
        ))
    return sorted(rows, key=lambda row: -row.ds_drop)


def impact_table(rows: list[ComponentImpact], title: str = "component impact") -> Table:
    """The component impact table for the terminal, largest D/s drop first."""
    out = Table("component switched off", "D/s full", "D/s without", "D/s drop", "95% CI", "accuracy drop",
                "tokens/s drop", *(f"{name} full / without" for name in MECHANISMS), title=title)
    for r in rows:
        ci = f"[{_fmt(r.ds_drop_ci95[0])}, {_fmt(r.ds_drop_ci95[1])}]" if r.ds_drop_ci95 else ""
        out.add_row(r.component, _fmt(r.ds_full), _fmt(r.ds_without), _fmt(r.ds_drop), ci, _fmt(r.accuracy_drop),
                    _fmt(r.tokens_per_s_drop), *(f"{_fmt(r.mechanism_full.get(name))} / "
                                                 f"{_fmt(r.mechanism_without.get(name))}" for name in MECHANISMS))
    return out


def table(comparison: Comparison) -> Table:
    """The comparison as a rich table for the terminal."""
    title = "comparable" if comparison.comparable else "NOT comparable: " + "; ".join(comparison.reasons)
    out = Table("configuration", "figure", "A", "B", "B - A", "95% CI", title=title)
    for c in comparison.configurations:
        for key in DELTAS:
            ci = c.delta_ci95.get(key)
            out.add_row(c.a if c.a == c.b else f"{c.a} / {c.b}", key, _fmt(c.a_figures[key]), _fmt(c.b_figures[key]),
                        _fmt(c.delta[key]), f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "")
    return out


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
