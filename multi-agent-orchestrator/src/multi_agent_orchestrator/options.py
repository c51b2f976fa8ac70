"""The orchestrator's settings: how many agents, when to fork, how to weigh the votes, when to stop."""

from __future__ import annotations

from dataclasses import dataclass

from mimo_core.contract import Contract

from .confidence import MEASURES

WEIGHTINGS = ("unweighted", "cisc", "deepconf")  # how votes weigh: see vote.py


@dataclass
class Options(Contract):
    """How the orchestrator votes. The weighting is the bench's choice (results/bench.json: 6 GSM8K problems and 6
    triage vignettes on qwen2.5-coder-0.5b, 5 agents, the same traces weighed every way): no weighting answered more
    tasks right than the plain majority, and among those of equal D/s the majority with doubt is the best calibrated
    (expected calibration error 0.13, the plain vote share 0.35). DeepConf's 90% kept stays the early-stop rule."""

    agents: int = 5
    first_wave: int = 3  # agents started first; the rest only if they disagree (0: all at once)
    branches: int = 2  # continuations sampled at an agent's fork point; 0: no forks
    fork_entropy: float = 1.2  # nats of top-k entropy that make a token a fork point (top-5 caps it at ln 6 = 1.79)
    fork_min_token: int = 8  # no fork in the first tokens of a reply
    early_stop: bool = True
    warmup: int = 2  # finished traces that set the stop threshold
    keep: float = 0.9  # DeepConf's kept fraction: the threshold is the (1 - keep) quantile of the warm-up traces
    window: int = 0  # ESC: stop when this many answers in a row agree (0: off)
    weighting: str = "unweighted"
    measure: str = "tail"  # for the weighted votes; unweighted ignores it
    temperature: float = 0.5  # CISC's softmax temperature, in units of token confidence
    doubt: bool = True  # each voter gives the weight its tokens are unsure of to doubt (see vote.py)
    max_tokens: int = 384
    top_logprobs: int = 5
    spec_voter: bool = True  # the spec-reasoner's answer votes, where the record has one

    def __post_init__(self) -> None:
        checks = [
            (self.agents >= 1, "agents must be at least 1"),
            (self.first_wave >= 0, "first_wave must be 0 or more"),
            (self.branches >= 0, "branches must be 0 or more"),
            (self.warmup >= 1, "warmup must be at least 1"),
            (0 < self.keep <= 1, "keep must be in (0, 1]"),
            (self.window >= 0, "window must be 0 or more"),
            (self.weighting in WEIGHTINGS, f"weighting must be one of {', '.join(WEIGHTINGS)}"),
            (self.measure in MEASURES, f"measure must be one of {', '.join(MEASURES)}"),
            (self.temperature > 0, "temperature must be positive"),
            (self.max_tokens >= 1, "max_tokens must be at least 1"),
            (1 <= self.top_logprobs <= 20, "top_logprobs must be 1..20"),
        ]
        failed = [message for ok, message in checks if not ok]
        if failed:
            raise ValueError(failed[0])
