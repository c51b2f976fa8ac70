"""How sure a trace was, measured from its token logprobs only, never from what the agent says of itself.

DeepConf's measures (Fu et al., 2025): a token's confidence is minus the mean of its top-k logprobs (a peaked
distribution puts the alternatives far below the chosen token, so the mean is very negative and the confidence
high); a group confidence averages it over a sliding window of tokens; a trace is then summarised by its lowest
group, the mean of its bottom 10% of groups, or its tail (the last tokens, where the answer is written).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

MEASURES = ("mean", "lowest_group", "bottom10", "tail")
WINDOW = 16  # tokens per group: our traces are 50-300 tokens, not DeepConf's thousands
TAIL = 32  # tokens at the end of a trace


def token_confidence(top_logprobs: Sequence[float]) -> float:
    """DeepConf's token confidence: minus the mean of the top-k logprobs (0 when the server gave none)."""
    return -float(np.mean(top_logprobs)) if len(top_logprobs) else 0.0


def token_entropy(top_logprobs: Sequence[float]) -> float:
    """Entropy (nats) of the top-k distribution, the mass the server left out counted as one more outcome.

    A lower bound of the true entropy that grows with the real uncertainty: the signal for where to fork."""
    probs = np.exp(np.asarray(top_logprobs, dtype=np.float64))  # [k]
    rest = max(0.0, 1.0 - float(probs.sum()))
    terms = [p * math.log(p) for p in [*probs.tolist(), rest] if p > 0]
    return -float(sum(terms))


def group_confidences(confidences: Sequence[float], window: int = WINDOW) -> np.ndarray:
    """Mean token confidence of every full sliding window; one group of all tokens when the trace is shorter."""
    values = np.asarray(confidences, dtype=np.float64)  # [T]
    if len(values) == 0:
        return values
    if len(values) <= window:
        return values.mean(keepdims=True)  # [1]
    sums = np.convolve(values, np.ones(window), mode="valid")  # [T - window + 1]
    return sums / window


def trace_confidence(confidences: Sequence[float], measure: str, window: int = WINDOW, tail: int = TAIL) -> float:
    """One number for a whole trace: `mean`, `lowest_group`, `bottom10` (mean of the lowest 10% of groups) or `tail`."""
    if measure not in MEASURES:
        raise ValueError(f"unknown confidence measure {measure!r} (one of {', '.join(MEASURES)})")
    if len(confidences) == 0:
        return 0.0
    if measure == "mean":
        return float(np.mean(confidences))
    if measure == "tail":
        return float(np.mean(confidences[-tail:]))
    groups = np.sort(group_confidences(confidences, window))  # [G] lowest first
    if measure == "lowest_group":
        return float(groups[0])
    return float(groups[: max(1, len(groups) // 10)].mean())


def certainty(logprobs: Sequence[float], tail: int = TAIL) -> float:
    """The geometric-mean probability of a trace's last `tail` sampled tokens: a probability in (0, 1]."""
    if len(logprobs) == 0:
        return 1.0
    return math.exp(float(np.mean(logprobs[-tail:])))


def stop_threshold(warmup: Sequence[Sequence[float]], keep: float) -> float:
    """DeepConf's online threshold: the (1 - keep) quantile of the warm-up traces' lowest group confidences."""
    lows = [trace_confidence(confidences, "lowest_group") for confidences in warmup]
    return float(np.quantile(lows, 1.0 - keep))


@dataclass
class RunningGroup:
    """The group confidence of a trace as its tokens arrive: the mean over the last `window` tokens.

    `lowest` is the lowest full-window value so far (None until a window is full)."""

    window: int = WINDOW
    _values: deque = field(default_factory=deque)
    _sum: float = 0.0
    lowest: float | None = None

    def push(self, confidence: float) -> float | None:
        """Add one token's confidence; the current group confidence once the window is full, else None."""
        self._values.append(confidence)
        self._sum += confidence
        if len(self._values) > self.window:
            self._sum -= self._values.popleft()
        if len(self._values) < self.window:
            return None
        group = self._sum / self.window
        self.lowest = group if self.lowest is None else min(self.lowest, group)
        return group
