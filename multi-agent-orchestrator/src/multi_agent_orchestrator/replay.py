"""Early stop replayed on traces that ran to the end: what the online rules would have cut, and the vote left.

The replay assumes the agents advance in lockstep, one token per engine step (the embedded engine decodes them in
one batch), so a trace's n-th token arrives at step n. It applies the same rules as the live orchestrator: the
threshold from the first `warmup` traces to finish, a trace stopped at its first full window below it after that,
and every running trace cut once the leading answer cannot be overtaken.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .confidence import WINDOW, group_confidences, stop_threshold
from .options import Options
from .vote import Tally, cast, decided, window_agrees


@dataclass(frozen=True)
class Signal:
    """A finished trace as the replay needs it: its answer key and its tokens' confidences and logprobs."""

    key: str | None
    confidences: Sequence[float]
    logprobs: Sequence[float]


@dataclass(frozen=True)
class Replayed:
    """The vote that early stop would have left, and its cost."""

    tally: Tally
    tokens: int  # tokens generated with early stop
    full_tokens: int  # tokens of the traces run to the end
    statuses: list[str]  # per trace: done, stopped or cancelled
    steps: int  # engine steps until the vote ended


def _stop_at(confidences: Sequence[float], threshold: float, after: int, window: int) -> int | None:
    """Tokens generated when the trace is stopped: at its first full window below `threshold` ending at or past
    token `after` (a window ending at token t is known at step t + 1); None when it never falls below."""
    if len(confidences) < window:
        return None
    groups = group_confidences(confidences, window)  # [T - window + 1]; group g ends at token g + window - 1
    ends = np.arange(len(groups)) + window - 1
    below = np.nonzero((groups < threshold) & (ends >= after))[0]
    return int(ends[below[0]]) + 1 if below.size else None


def replay(signals: Sequence[Signal], options: Options, group_window: int = WINDOW) -> Replayed:
    """Replay `options`' early stop (trace stop, then vote stop) over `signals`, in the order they would finish."""
    n = len(signals)
    ends = [len(s.confidences) for s in signals]
    full = sum(ends)
    statuses = ["done"] * n
    order = sorted(range(n), key=lambda i: (ends[i], i))
    if options.early_stop and n > options.warmup:
        warm = order[: options.warmup]
        threshold = stop_threshold([signals[i].confidences for i in warm], options.keep)
        after = ends[warm[-1]]
        for i in order[options.warmup :]:
            stop = _stop_at(signals[i].confidences, threshold, after, group_window)
            if stop is not None and stop < ends[i]:
                ends[i], statuses[i] = stop, "stopped"
    steps = max(ends, default=0)
    if options.early_stop:
        steps = _vote_stop(signals, options, ends, statuses) or steps
    done = [i for i in range(n) if statuses[i] == "done"]
    vote, _ = cast([signals[i].key for i in done], [signals[i].confidences for i in done],
                   [signals[i].logprobs for i in done], options)
    return Replayed(vote, sum(ends), full, statuses, steps)


def _vote_stop(signals: Sequence[Signal], options: Options, ends: list[int], statuses: list[str]) -> int | None:
    """Cut the running traces at the first finish after which the vote is decided; the step, or None."""
    finishing = sorted((ends[i], i) for i in range(len(signals)) if statuses[i] == "done")
    arrived: list[int] = []
    for step, i in finishing:
        arrived.append(i)
        running = [j for j in range(len(signals)) if ends[j] > step]
        if not running:
            return None
        vote, _ = cast([signals[j].key for j in arrived], [signals[j].confidences for j in arrived],
                       [signals[j].logprobs for j in arrived], options)
        if decided(vote.votes, len(running)) or window_agrees([signals[j].key for j in arrived], options.window):
            for j in running:
                ends[j], statuses[j] = step, "cancelled"
            return step
    return None
