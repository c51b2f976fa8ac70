"""The vote: answers normalised per domain, weighted by measured confidence, tallied, and stopped once decided.

Weightings: `unweighted` (plain majority, self-consistency), `cisc` (CISC, Taubenfeld et al., 2025: a softmax of
the traces' confidences with a temperature) and `deepconf` (DeepConf: keep the most confident fraction of the traces,
each weighing its confidence). Every voter also splits its weight between its answer and doubt by its own token
certainty, so that the winner's share of the weight is a probability that can be calibrated (a lone voter's share is
its certainty, not 1).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mimo_core.answers import extract_answer

from .confidence import certainty, trace_confidence
from .options import WEIGHTINGS, Options

_COMMENT_RE = re.compile(r"#[^\n]*")


def normalise_code(code: str) -> str:
    """Code as text with comments, blank lines and trailing spaces dropped: the key when behaviour cannot be run."""
    lines = (_COMMENT_RE.sub("", line).rstrip() for line in code.splitlines())
    return "\n".join(line for line in lines if line.strip())


def normalise_text(text: str) -> str:
    """Free text compared as people would: case, spacing and end punctuation ignored."""
    return re.sub(r"\s+", " ", text).strip().rstrip(".!").casefold()


def answer_of(domain: str, text: str | None) -> tuple[str | None, str | None]:
    """(the answer as `consensus.answer` holds it, its vote key before behaviour) for an agent's text.

    math: the number by value; triage: the ESI level; coding: the program, keyed by its normalised text (a behaviour
    key replaces it where the program can be run); general: the final answer line, normalised."""
    answer = extract_answer(domain, text)
    if answer is None:
        return None, None
    if domain == "coding":
        return answer, "text:" + normalise_code(answer)
    if domain == "general":
        return answer, normalise_text(answer)
    return answer, answer


def weights(confidences: Sequence[float], weighting: str, temperature: float = 1.0, keep: float = 0.9) -> list[float]:
    """Each trace's weight from its confidence, scaled so that the heaviest weighs 1.

    cisc: exp(c / temperature); deepconf: the top `keep` fraction by confidence (at least one) weigh their confidence
    over the best one's, the rest 0; unweighted: 1 each."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r} (one of {', '.join(WEIGHTINGS)})")
    c = np.asarray(confidences, dtype=np.float64)  # [N]
    if len(c) == 0 or weighting == "unweighted":
        return [1.0] * len(c)
    if weighting == "cisc":
        return np.exp((c - c.max()) / temperature).tolist()
    kept = max(1, math.ceil(keep * len(c)))
    cutoff = np.sort(c)[::-1][kept - 1]
    positive = np.maximum(c, 1e-9)
    return np.where(c >= cutoff, positive / positive.max(), 0.0).tolist()


@dataclass(frozen=True)
class Tally:
    """The result of a vote: weight per answer key, the winner and its share of all the weight."""

    votes: dict[str, float]
    winner: str | None
    share: float | None


def tally(keys: Sequence[str | None], weights: Sequence[float], certainties: Sequence[float] | None = None) -> Tally:
    """Add up the votes; a voter with no answer (None) only adds to the total.

    Each voter gives weight x certainty to its answer and the rest to doubt, so the winner's share is at most the
    certainty of its voters. Ties go to the answer with the heaviest single vote, then to the one seen first."""
    certainties = certainties if certainties is not None else [1.0] * len(keys)
    votes: dict[str, float] = {}
    heaviest: dict[str, float] = {}
    for key, weight, sure in zip(keys, weights, certainties):
        if key is not None:
            votes[key] = votes.get(key, 0.0) + weight * sure
            heaviest[key] = max(heaviest.get(key, 0.0), weight * sure)
    total = float(sum(weights))
    if not votes or total <= 0:
        return Tally(votes, None, None)
    order = list(votes)
    winner = max(order, key=lambda k: (votes[k], heaviest[k], -order.index(k)))
    return Tally(votes, winner, votes[winner] / total)


def cast(
    keys: Sequence[str | None],
    confidences: Sequence[Sequence[float]],
    logprobs: Sequence[Sequence[float]],
    options: Options,
    verified: tuple[str | None, float] | None = None,
) -> tuple[Tally, list[float]]:
    """The vote of finished traces (their answer keys, token confidences and logprobs) under `options`, and each
    trace's weight. `verified` is a voter of known (key, certainty) that weighs as the heaviest trace."""
    measured = [trace_confidence(c, options.measure) for c in confidences]
    w = weights(measured, options.weighting, options.temperature, options.keep)
    sure = [certainty(lp) if options.doubt else 1.0 for lp in logprobs]
    if verified is None:
        return tally(keys, w, sure), w
    return tally([*keys, verified[0]], [*w, 1.0], [*sure, verified[1]]), w


def decided(votes: dict[str, float], running: int, max_weight: float = 1.0) -> bool:
    """True when the leader cannot be overtaken even if all `running` voters join the runner-up at `max_weight`."""
    if not votes:
        return False
    first, second = (sorted(votes.values(), reverse=True) + [0.0])[:2]
    return first - second > running * max_weight


def window_agrees(keys_in_order: Sequence[str | None], window: int) -> bool:
    """ESC's rule: the last `window` answers to arrive are one and the same (0 turns it off)."""
    last = list(keys_in_order[-window:]) if window > 0 else []
    return len(last) == window > 0 and last[0] is not None and all(k == last[0] for k in last)
