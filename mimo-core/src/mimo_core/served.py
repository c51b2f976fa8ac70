"""`served`: what one stage's model calls for one record actually got back, summed over its calls.

It is the evidence of the record's plan: the prompt tokens the server took from its prefix cache (the standard
`usage.prompt_tokens_details.cached_tokens`, or the engine's `mimo.cache`), the precision policies the engine ran
and the bits per weight it read, the block drafter each call ran with and the tokens drafted and accepted. A figure
that no call reported is null and `reported[figure]` is false: a backend that says nothing is never counted as 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .contract import Contract

# figure -> where it comes from; `reported` has one entry per figure
FIGURES = ("cached_tokens", "policies", "bits_per_weight", "drafters", "drafted_tokens", "accepted_tokens")


def _add(total: int | None, value: Any) -> int | None:
    return total if not isinstance(value, int) or isinstance(value, bool) else (total or 0) + value


def _tally(counts: dict[str, int] | None, name: Any, calls: int = 1) -> dict[str, int] | None:
    """`counts` with `calls` more under `name` (a reported name; anything else leaves them as they are)."""
    if not isinstance(name, str):
        return counts
    counts = dict(counts or {})
    counts[name] = counts.get(name, 0) + calls
    return counts


@dataclass
class Served(Contract):
    """Summed over a stage's calls for one record (see the module docstring)."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None
    policies: dict[str, int] | None = None  # precision policy -> calls that ran under it
    weight_bytes: int | None = None  # weight bytes read for the computed tokens (the engine's count)
    weights_read: int | None = None  # weights those bytes hold: 8 * weight_bytes / weights_read bits per weight
    bits_per_weight: float | None = None
    drafters: dict[str, int] | None = None  # block drafter (or none) -> calls that ran with it
    drafted_tokens: int | None = None
    accepted_tokens: int | None = None
    verification_passes: int | None = None
    reported: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(FIGURES, False))

    def add(self, calls: int, prompt_tokens: int, completion_tokens: int, cached_tokens: int | None,
            engine: dict[str, Any] | None) -> None:
        """Add one call: its usage, the standard cached-token count (None if the server gave none) and the engine's
        `mimo` report (None from a server that does not speak it)."""
        self.calls += calls
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        engine = engine if isinstance(engine, dict) else {}
        cache = engine.get("cache") if isinstance(engine.get("cache"), dict) else {}
        self.cached_tokens = _add(self.cached_tokens, cached_tokens if cached_tokens is not None
                                  else cache.get("cached_tokens"))
        precision = engine.get("precision") if isinstance(engine.get("precision"), dict) else {}
        self.policies = _tally(self.policies, precision.get("policy"))
        self.weight_bytes = _add(self.weight_bytes, precision.get("weight_bytes"))
        self.weights_read = _add(self.weights_read, precision.get("weights_read"))
        if self.weight_bytes is not None and self.weights_read:
            self.bits_per_weight = round(8 * self.weight_bytes / self.weights_read, 4)
        speculation = engine.get("speculation") if isinstance(engine.get("speculation"), dict) else {}
        self.drafters = _tally(self.drafters, speculation.get("method"))
        self.drafted_tokens = _add(self.drafted_tokens, speculation.get("drafted_tokens"))
        self.accepted_tokens = _add(self.accepted_tokens, speculation.get("accepted_tokens"))
        self.verification_passes = _add(self.verification_passes, speculation.get("verification_passes"))
        self.reported = {name: getattr(self, name) is not None for name in FIGURES}

    def merge(self, other: Served) -> None:
        """Add another record's or stage's figures (a report's totals)."""
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        for name in ("cached_tokens", "weight_bytes", "weights_read", "drafted_tokens", "accepted_tokens",
                     "verification_passes"):
            setattr(self, name, _add(getattr(self, name), getattr(other, name)))
        for policy, calls in (other.policies or {}).items():
            self.policies = _tally(self.policies, policy, calls)
        for drafter, calls in (other.drafters or {}).items():
            self.drafters = _tally(self.drafters, drafter, calls)
        self.bits_per_weight = (round(8 * self.weight_bytes / self.weights_read, 4)
                                if self.weight_bytes is not None and self.weights_read else None)
        self.reported = {name: getattr(self, name) is not None for name in FIGURES}

    @property
    def cached_share(self) -> float | None:
        """The share of prompt tokens served from the prefix cache, where it was reported."""
        if self.cached_tokens is None or not self.prompt_tokens:
            return None
        return round(self.cached_tokens / self.prompt_tokens, 4)

    @property
    def accepted_per_pass(self) -> float | None:
        """Tokens a verification pass yields: the accepted drafted tokens plus the target's own, per pass."""
        if not self.verification_passes or self.accepted_tokens is None:
            return None
        return round((self.accepted_tokens + self.verification_passes) / self.verification_passes, 4)
