"""Self-contained HTML reports: tables and inline PNG figures, no script, nothing fetched from a network.

Every value is escaped: a results file carries task text and model answers, which may hold anything."""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ds_benchmark.compare import DELTAS, Comparison
from ds_benchmark.results import MECHANISMS, ComponentImpact, Results

from .plots import comparison_figure, data_uri, png, results_figure

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0 1.6em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: bold; padding-bottom: 0.3em; }
img { max-width: 100%; }
.refused { color: #a00; font-weight: bold; }
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return f"[{value[0]:.4g}, {value[1]:.4g}]"
    return str(value)


def _cell(value: Any) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"<td class=\"num\">{_fmt(value)}</td>" if numeric else f"<td>{html.escape(_fmt(value))}</td>"


def table(caption: str, header: Sequence[str], rows: Iterable[Sequence[Any]], css_class: str = "") -> str:
    """An HTML table; every cell escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    head = f"<tr>{head}</tr>" if head else ""
    body = "".join("<tr>" + "".join(_cell(cell) for cell in row) + "</tr>" for row in rows)
    cls = f' class="{css_class}"' if css_class else ""
    return f"<table{cls}><caption>{html.escape(caption)}</caption>{head}{body}</table>"


def page(title: str, parts: list[str]) -> str:
    """A whole page around the given HTML parts."""
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>\n")


def image(alt: str, png_bytes: bytes) -> str:
    """An inline PNG figure."""
    return f'<figure><img alt="{html.escape(alt)}" src="{data_uri(png_bytes)}"></figure>'


def impact_table(caption: str, rows: list[ComponentImpact]) -> str:
    """The component impact table, largest D/s drop first, each row's mechanism with the component on and off."""
    return table(caption, ["component switched off", "D/s full", "D/s without", "D/s drop", "95% CI",
                           "accuracy drop", "tokens/s drop", "paired tasks",
                           *(f"{name} full / without" for name in MECHANISMS)],
                 [[r.component, r.ds_full, r.ds_without, r.ds_drop, r.ds_drop_ci95, r.accuracy_drop,
                   r.tokens_per_s_drop, r.paired_tasks,
                   *(f"{_fmt(r.mechanism_full.get(m))} / {_fmt(r.mechanism_without.get(m))}" for m in MECHANISMS)]
                  for r in rows], "impact")


def results_page(results: Results, title: str) -> str:
    """The page of one run: setup, figures per configuration, impact, domains, stages, every outcome, the plot."""
    env = results.environment
    setup = table("run", [], [
        ["suite", f"{results.suite.get('name')} ({results.suite.get('n')} tasks, #{results.suite.get('digest')})"],
        ["seed", results.seed], ["D/s formula", results.formula], ["backend", env.get("backend")],
        ["models", ", ".join(env.get("models", []))],
        ["created", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(results.created_at))],
    ], "setup")
    figures = table("figures per configuration", [
        "configuration", "tasks", "correct", "wrong", "not run", "errors", "accuracy", "accuracy 95% CI", "D/s",
        "D/s 95% CI", "overconfident wrong", "tokens/s", "wall s", *MECHANISMS],
        [[c.name, f.n, f.correct, f.wrong, f.not_run, f.errors, f.accuracy, f.accuracy_ci95, f.ds, f.ds_ci95,
          f.overconfident_wrong, f.tokens_per_s, f.wall_s, *c.mechanism().values()]
         for c in results.configurations for f in [c.figures]],
        "figures")
    domains = table("per domain", ["configuration", "domain", "tasks", "accuracy", "D/s", "errors"],
                    [[c.name, d, f.n, f.accuracy, f.ds, f.errors]
                     for c in results.configurations for d, f in c.domains.items()], "domains")
    stages = table("per stage", ["configuration", "stage", "entries", "status", "wall s (sum)", "p50 s", "calls",
                                 "prompt tokens", "completion tokens"],
                   [[c.name, name, s["entries"], ", ".join(f"{k} {v}" for k, v in s["status"].items()),
                     s["wall_s"]["total"], s["wall_s"]["p50"], s["calls"], s["prompt_tokens"],
                     s["completion_tokens"]] for c in results.configurations for name, s in c.stages.items()],
                   "stages")
    outcomes = table("every task", ["configuration", "id", "domain", "difficulty", "correct", "confidence",
                                    "score", "detail"],
                     [[c.name, o.id, o.domain, o.difficulty, o.correct, o.confidence, o.score, o.error or o.detail]
                      for c in results.configurations for o in c.outcomes], "outcomes")
    parts = [setup, figures]
    if results.impact:
        parts.append(impact_table("component impact (D/s drop when one component is switched off)",
                                  results.impact))
    parts += [image("D/s and accuracy per configuration", png(results_figure(results))), domains, stages, outcomes]
    return page(title, parts)


def comparison_page(comparison: Comparison, a: Results, b: Results, a_name: str, b_name: str) -> str:
    """The page of a comparison: whether it is fair, B - A per shared configuration, each run's impact table."""
    verdict = ("<p>The runs are comparable: the same tasks, seed, models and formula; tasks are paired by id.</p>"
               if comparison.comparable else
               "<p class=\"refused\">NOT comparable: " + html.escape("; ".join(comparison.reasons)) + "</p>")
    deltas = table(f"{b_name} minus {a_name}", ["configuration", "figure", a_name, b_name, "B - A", "95% CI"],
                   [[f"{c.a}" if c.a == c.b else f"{c.a} / {c.b}", key, c.a_figures[key], c.b_figures[key],
                     c.delta[key], c.delta_ci95.get(key)] for c in comparison.configurations for key in DELTAS],
                   "deltas")
    parts = [verdict, deltas]
    for name, results in ((a_name, a), (b_name, b)):
        if results.impact:
            parts.append(impact_table(f"component impact of {name}", results.impact))
    figure = comparison_figure(comparison, a, b, a_name, b_name)
    parts.append(image("D/s and accuracy of both runs, and B - A", png(figure)))
    return page(f"{a_name} vs {b_name}", parts)
