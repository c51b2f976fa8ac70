"""The bench's statistics: calibration error, and bootstrap intervals of paired differences."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BINS = 10
DRAWS = 2000


def calibration_error(confidences: Sequence[float | None], correct: Sequence[bool], bins: int = BINS) -> float | None:
    """Expected calibration error: over equal-width confidence bins, |accuracy - mean confidence| weighted by the
    bin's share of the answers. A missing confidence counts as 0 (the answer claims nothing)."""
    if len(correct) == 0:
        return None
    conf = np.asarray([c or 0.0 for c in confidences], dtype=np.float64)  # [N]
    right = np.asarray(correct, dtype=np.float64)  # [N]
    which = np.minimum((conf * bins).astype(int), bins - 1)  # [N] bin of each answer; 1.0 goes in the last
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(right[members].mean() - conf[members].mean())
    return float(error)


def reliability(confidences: Sequence[float | None], correct: Sequence[bool], bins: int = BINS) -> list[list[float]]:
    """[mean confidence, accuracy, count] of every non-empty bin: the points of a reliability diagram."""
    conf = np.asarray([c or 0.0 for c in confidences], dtype=np.float64)
    right = np.asarray(correct, dtype=np.float64)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    return [[float(conf[which == b].mean()), float(right[which == b].mean()), int((which == b).sum())]
            for b in range(bins) if (which == b).any()]


def paired_difference(a: Sequence[float], b: Sequence[float], seed: int = 0, draws: int = DRAWS) -> dict[str, float]:
    """Mean of b - a over the same items, with a 95% bootstrap interval (items resampled together)."""
    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)  # [N]
    if len(diff) == 0:
        return {"mean": 0.0, "low": 0.0, "high": 0.0}
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(draws, len(diff)))].mean(axis=1)  # [draws]
    low, high = np.quantile(means, [0.025, 0.975])
    return {"mean": float(diff.mean()), "low": float(low), "high": float(high)}
