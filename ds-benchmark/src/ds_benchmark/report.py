"""`report`: scored records in, `mimo.results/1` out, one configuration per set of disabled components."""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from mimo_core.record import SECTIONS, TaskRecord
from mimo_core.served import Served

from .compare import component_impact
from .results import Configuration, Outcome, Results
from .score import figures, is_confident, percentiles, record_score
from .verify import NO_REFERENCE, STAGE, Verdict


def wall_time(records: Iterable[TaskRecord]) -> float | None:
    """The run's wall-clock time of model work: how long at least one record was in a pipeline stage, i.e. the
    length of the union of the trace entries' intervals. Scoring (this package's own stage) is the benchmark's
    overhead, not the system's, and is left out; so is the time between the parts of a run that was interrupted
    and resumed, when no record was in any stage."""
    intervals = sorted((e.started_at, e.ended_at) for record in records for e in record.trace if e.stage != STAGE)
    if not intervals:
        return None
    total, (start, end) = 0.0, intervals[0]
    for lo, hi in intervals[1:]:
        if lo > end:
            total, start = total + end - start, lo
        end = max(end, hi)
    return total + end - start


def outcome(record: TaskRecord, formula: str) -> Outcome:
    """The record's outcome, read from its verdict and never re-scored here (scoring runs a model's code, and this
    only reads). A record with no verdict, or whose answer was not checked (`correct: null`), scores 0 and is an
    error, neither right nor a wrong answer; one with no reference is not scored, and not an error either."""
    error, unchecked = record.error, None
    if record.verdict:
        v = Verdict.from_dict(record.verdict, f"record {record.id!r}: verdict")
        correct, confidence, detail = v.correct, v.confidence, v.detail
        if correct is None:
            # Verdicts written before `unchecked` existed said "no reference" only in their detail.
            unchecked = v.unchecked or ("no_reference" if v.detail == NO_REFERENCE else None)
            if unchecked != "no_reference":
                error = error or f"not checked: {detail}"
    else:
        correct, confidence, detail = None, None, ""
        error = "not scored: run `ds-benchmark score` on the records first"
    return Outcome(
        id=str(record.id),
        domain=record.domain,
        difficulty=record.difficulty,
        correct=correct,
        confidence=confidence,
        score=0.0 if correct is None else record_score(correct, confidence, formula),
        overconfident_wrong=correct is False and is_confident(confidence),
        latency_s=wall_time([record]),
        prompt_tokens=sum(e.prompt_tokens for e in record.trace),
        completion_tokens=sum(e.completion_tokens for e in record.trace),
        error=error,
        detail=detail,
        unchecked=unchecked,
    )


def served_total(entries: Iterable) -> Served:
    """What the calls of these trace entries were served, summed (entries without calls add nothing)."""
    total = Served()
    for entry in entries:
        if entry.served is not None:
            total.merge(entry.served)
    return total


def stage_figures(records: list[TaskRecord]) -> dict[str, dict[str, Any]]:
    """Per stage, from the trace: entries by status, wall time, model calls and tokens, and what they were served."""
    by_stage = defaultdict(list)
    for entry in (e for record in records for e in record.trace):
        by_stage[entry.stage].append(entry)
    return {
        stage: {
            "entries": len(entries),
            "status": {s: sum(e.status == s for e in entries) for s in sorted({e.status for e in entries})},
            "wall_s": {"total": round(sum(e.wall_s for e in entries), 6), **percentiles(e.wall_s for e in entries)},
            "calls": sum(e.calls for e in entries),
            "prompt_tokens": sum(e.prompt_tokens for e in entries),
            "completion_tokens": sum(e.completion_tokens for e in entries),
            "served": served_total(entries).to_dict(),
        }
        for stage, entries in by_stage.items()
    }


def configuration(disabled: list[str], records: list[TaskRecord], wall_s: float | None, formula: str,
                  seed: int) -> Configuration:
    """One configuration's figures: overall, per domain, per stage, and every outcome."""
    wall_s = wall_s or wall_time(records)
    if not wall_s:
        raise ValueError("the records carry no trace to time the run by; give --wall-s")
    outcomes = [outcome(record, formula) for record in records]
    domains = sorted({o.domain for o in outcomes})
    return Configuration(
        name="full" if not disabled else "without " + "+".join(disabled),
        disabled=disabled,
        figures=figures(outcomes, wall_s, seed),
        domains={d: figures([o for o in outcomes if o.domain == d], wall_s, seed) for d in domains},
        stages=stage_figures(records),
        outcomes=outcomes,
        served=served_total(e for record in records for e in record.trace),
    )


def environment(records: list[TaskRecord]) -> dict[str, Any]:
    """Where the run happened, as its stages recorded it in their trace entries: backends, endpoints, models,
    versions, machines, and the sandbox the coding verdicts ran in (never a key)."""
    provenances = [e.provenance for r in records for e in r.trace if e.provenance]
    models = {value for r in records for section in (r.config, *(getattr(r, s) for s in SECTIONS))
              for key, value in section.items() if key.endswith("model") and isinstance(value, str)}
    models |= {m for p in provenances for m in p.get("models", []) if isinstance(m, str)}
    versions: dict[str, set[str]] = defaultdict(set)
    for p in provenances:
        for package, version in (p.get("versions") or {}).items():
            versions[package].add(str(version))
    machines = {json.dumps(p["machine"], sort_keys=True) for p in provenances if isinstance(p.get("machine"), dict)}
    stage_backends = {r.precision.get("backend") for r in records} | {r.kv.get("backend") for r in records}
    return {
        "backend": " + ".join(sorted({str(p.get("backend")) for p in provenances})) or "unknown",
        "endpoints": sorted({str(p.get("endpoint")) for p in provenances if p.get("endpoint")}),
        "stage_backends": sorted(b for b in stage_backends if isinstance(b, str)),
        "sandbox_isolation": sorted({r.verdict["isolation"] for r in records if r.verdict.get("isolation")}),
        "models": sorted(models),
        "machines": [json.loads(m) for m in sorted(machines)],
        "versions": {package: sorted(found) for package, found in sorted(versions.items())},
    }


def suite(records: list[TaskRecord]) -> dict[str, Any]:
    """The suite's name and a digest of its tasks and references, which tells two suites apart."""
    tasks = {r.id: [r.domain, r.task, r.reference] for r in records}
    digest = hashlib.sha256(json.dumps(sorted(tasks.items()), sort_keys=True).encode()).hexdigest()[:16]
    names = sorted({str(r.config.get("suite")) for r in records if r.config.get("suite")})
    return {"name": " | ".join(names) or None, "n": len(tasks), "digest": digest}


def build_results(records: list[TaskRecord], wall_s: float | None = None, formula: str = "design") -> Results:
    """The results of scored records; records are grouped into configurations by their `config.disabled` set."""
    if not records:
        raise ValueError("no records to report on")
    groups: dict[tuple[str, ...], list[TaskRecord]] = defaultdict(list)
    for record in records:
        groups[tuple(sorted(record.disabled))].append(record)
    seeds = {r.config.get("seed") for r in records}
    seed = seeds.pop() if len(seeds) == 1 else None
    bootstrap_seed = seed if isinstance(seed, int) else 0
    results = Results(
        suite=suite(records),
        seed=seed,
        task_ids=list(dict.fromkeys(r.id for r in records)),
        formula=formula,
        environment=environment(records),
        configurations=[configuration(list(key), group, wall_s, formula, bootstrap_seed)
                        for key, group in sorted(groups.items())],
        created_at=time.time(),
    )
    results.impact = component_impact(results)
    return results


def summary_lines(results: Results) -> list[str]:
    """One line per configuration for a person (records, correct, wrong, not run, errors, D/s), then one per
    component of an ablation's impact table."""
    lines = [f"{c.name}: {f.n} records, {f.correct} correct, {f.wrong} wrong, {f.not_run} not run, {f.errors} errors"
             + (f", {f.unscored} with no reference (not scored)" if f.unscored else "")
             + f"; D/s {f.ds:g} over {f.wall_s:g} s" for c in results.configurations for f in [c.figures]]
    return lines + [f"impact of {r.component}: D/s drop {r.ds_drop:g} (95% CI {r.ds_drop_ci95}) when switched off"
                    for r in results.impact]
