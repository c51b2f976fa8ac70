"""The figures every tool's bench and report compute alike: D/s, and seeded bootstrap intervals."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

BOOTSTRAP_ROUNDS = 2000


def decisions_per_second(difficulty: np.ndarray, score: np.ndarray, wall_s: float) -> np.ndarray:
    """D/s = sum(difficulty_i * s_i) / wall_s over the last axis (so it also takes a stack of resamples)."""
    return (np.asarray(difficulty, dtype=float) * np.asarray(score, dtype=float)).sum(axis=-1) / wall_s


def bootstrap_interval(columns: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], seed: int = 0,
                       rounds: int = BOOTSTRAP_ROUNDS, digits: int = 6) -> list[float] | None:
    """The 95% percentile interval of `statistic` over resamples of the rows of `columns` (n x k), seeded, rounded
    to `digits`; None when there are no rows. `statistic` maps resamples (rounds x n x k) to one value per round."""
    if len(columns) == 0:
        return None
    rows = np.random.default_rng(seed).integers(0, len(columns), size=(rounds, len(columns)))
    low, high = np.percentile(statistic(columns[rows]), [2.5, 97.5])
    return [round(float(low), digits) + 0.0, round(float(high), digits) + 0.0]  # + 0.0 turns -0.0 into 0.0
