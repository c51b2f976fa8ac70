"""The verifier's score of a step: one token 0-9, read from the oracle's top logprobs, probability-weighted; or the
oracle's own mean token log-probability of the step, read from echoed prompt logprobs."""

from __future__ import annotations

import math

TOP_LOGPROBS = 20  # the most OpenAI-compatible servers return; enough to see all ten digits


def digit_score(top_logprobs: dict[str, float]) -> tuple[float | None, float]:
    """(score, mass): the expected digit under the oracle's next-token distribution, and the probability on digits.

    Tokens that are one digit once stripped ("7", " 7") count for that digit. No digit among the alternatives gives
    a score of None: the oracle did not answer with a score, which the loop treats as a rejection."""
    weights = [0.0] * 10
    for token, logprob in top_logprobs.items():
        digit = token.strip()
        if len(digit) == 1 and digit in "0123456789" and logprob is not None and math.isfinite(logprob):
            weights[int(digit)] += math.exp(logprob)
    mass = sum(weights)
    if mass <= 0.0:
        return None, 0.0
    return sum(d * w for d, w in enumerate(weights)) / mass, mass


def accepted_prefix(scores: list[float | None], threshold: float) -> int:
    """How many steps, from the first, have a score at or above `threshold` (the longest accepted prefix)."""
    for i, score in enumerate(scores):
        if score is None or score < threshold:
            return i
    return len(scores)


def span_logprob(tokens: list, start: int, end: int) -> float | None:
    """The mean log-probability of the echoed prompt tokens that start within characters [start, end) of the prompt;
    positions are the server's text offsets, or the running length of the token texts where it gives none."""
    values, position = [], 0
    for token in tokens:
        offset = token.offset if token.offset is not None else position
        position = offset + len(token.token)
        if start <= offset < end and token.logprob is not None and math.isfinite(token.logprob):
            values.append(token.logprob)
    return sum(values) / len(values) if values else None
