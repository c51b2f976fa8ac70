"""The D/s score and the figures around it: accuracy, tokens, latency, bootstrap intervals."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from mimo_core.stats import bootstrap_interval, decisions_per_second

from .results import Figures, Outcome

PENALTY = 2.0  # a confident wrong answer scores 1 - PENALTY = -1
CONFIDENT = 0.8  # "overconfident" is a wrong answer with confidence above this
FORMULAS = ("design", "seed")


def is_confident(confidence: float | None) -> bool:
    """Whether a confidence is high enough for a wrong answer to be penalised (above CONFIDENT)."""
    return confidence is not None and confidence > CONFIDENT


def record_score(correct: bool, confidence: float | None, formula: str = "design") -> float:
    """s_i of the D/s formula: 1 if correct, 1 - PENALTY if wrong with confidence above 0.8, else 0.

    `formula="seed"` is the proposal's snippet as printed: its penalty term is also multiplied by `correct`, which is 0
    exactly when the penalty should apply, so a confident wrong answer scores 0 instead of -1."""
    c = float(correct)
    confident = float(is_confident(confidence))
    if formula == "design":
        return c + (1 - c) * confident * (1 - PENALTY)
    if formula == "seed":
        return c + (1 - c) * confident * (1 - PENALTY) * c
    raise ValueError(f"unknown formula {formula!r} (one of {', '.join(FORMULAS)})")


def percentiles(values: Iterable[float | None]) -> dict[str, float | None]:
    """p50, p90 and p99 of the values that are known."""
    known = [v for v in values if v is not None]
    if not known:
        return {"p50": None, "p90": None, "p99": None}
    p50, p90, p99 = np.percentile(known, [50, 90, 99])
    return {"p50": round(float(p50), 6), "p90": round(float(p90), 6), "p99": round(float(p99), 6)}


def figures(outcomes: list[Outcome], wall_s: float, seed: int = 0) -> Figures:
    """D/s = sum(difficulty_i * s_i) / wall_s, with accuracy, tokens, latency and 95% bootstrap intervals."""
    # columns: difficulty, s_i, correct
    table = np.array([[o.difficulty, o.score, float(o.correct is True)] for o in outcomes], dtype=float).reshape(-1, 3)
    difficulty, score, correct = table.T
    completion = sum(o.completion_tokens for o in outcomes)
    n, weight = len(outcomes), difficulty.sum()
    return Figures(
        n=n,
        correct=int(correct.sum()),
        wrong=sum(o.correct is False for o in outcomes),
        not_run=sum(o.correct is None and o.unchecked != "no_reference" for o in outcomes),
        accuracy=round(float(correct.mean()), 6) if n else None,
        accuracy_ci95=bootstrap_interval(table, lambda t: t[..., 2].mean(axis=-1), seed),
        weighted_accuracy=round(float((difficulty * correct).sum() / weight), 6) if weight > 0 else None,
        ds=round(float(decisions_per_second(difficulty, score, wall_s)), 6),
        ds_ci95=bootstrap_interval(table, lambda t: decisions_per_second(t[..., 0], t[..., 1], wall_s), seed),
        overconfident_wrong=sum(o.overconfident_wrong for o in outcomes),
        errors=sum(o.error is not None for o in outcomes),  # not-run records carry their reason as an error
        prompt_tokens=sum(o.prompt_tokens for o in outcomes),
        completion_tokens=completion,
        tokens_per_s=round(completion / wall_s, 6),
        latency_s=percentiles(o.latency_s for o in outcomes),
        wall_s=round(wall_s, 6),
        unscored=sum(o.unchecked == "no_reference" for o in outcomes),
    )
