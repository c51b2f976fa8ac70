"""The `mimo.results/1` contract: a benchmark's figures per configuration, with every record's outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mimo_core.contract import Contract
from mimo_core.served import Served

SCHEMA = "mimo.results/1"
# What each component's mechanism shows in the calls a configuration made (`mechanism`): the share of prompt tokens
# served from a prefix cache, the bits per weight the engine read, and the tokens a verification pass yielded.
MECHANISMS = ("cached_share", "bits_per_weight", "accepted_per_pass")


@dataclass
class Outcome(Contract):
    """What the figures need of one scored record."""

    id: str
    domain: str
    difficulty: float
    correct: bool | None  # None: the answer could not be checked (no sandbox, never scored); see `error`
    confidence: float | None
    score: float  # s_i under the results' formula
    overconfident_wrong: bool
    latency_s: float | None  # this record's first stage start to its last stage end
    prompt_tokens: int
    completion_tokens: int
    error: str | None
    detail: str
    unchecked: str | None = None  # the verdict's reason for `correct: null` (no_reference, stage_error, ...)


@dataclass
class Figures(Contract):
    """The figures of a set of outcomes over a wall-clock time."""

    n: int
    correct: int
    wrong: int  # verdicts of wrong; records that could not be checked are `not_run` and errors, never wrong
    not_run: int  # not checked, and so errors: never scored, a stage's error, a reference unusable, no sandbox
    accuracy: float | None
    accuracy_ci95: list[float] | None
    weighted_accuracy: float | None
    ds: float
    ds_ci95: list[float] | None
    overconfident_wrong: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    tokens_per_s: float  # completion tokens per wall-clock second: the speed the pipeline is built for
    latency_s: dict[str, float | None]
    wall_s: float
    unscored: int = 0  # records with no reference: not scored by design, neither wrong nor an error


@dataclass
class Configuration(Contract):
    """One configuration of a run (the components it had disabled) and its figures: overall, per domain, per stage."""

    name: str
    disabled: list[str]
    figures: Figures
    domains: dict[str, Figures]
    stages: dict[str, dict[str, Any]]
    outcomes: list[Outcome]
    served: Served | None = None  # every stage's calls for every record, summed (None: made before it was kept)

    def mechanism(self) -> dict[str, float | None]:
        """The figures of MECHANISMS over the configuration's calls; None where no call reported them."""
        served = self.served or Served()
        return {"cached_share": served.cached_share, "bits_per_weight": served.bits_per_weight,
                "accepted_per_pass": served.accepted_per_pass}


@dataclass
class ComponentImpact(Contract):
    """One row of an ablation's component impact table: what switching one component off cost, paired by task."""

    component: str
    ds_full: float
    ds_without: float
    ds_drop: float  # the full pipeline's D/s minus the D/s without the component: positive when it helps
    ds_drop_ci95: list[float] | None  # paired bootstrap over the shared tasks
    accuracy_drop: float | None
    tokens_per_s_drop: float  # raw speed: completion tokens per second, full minus without
    paired_tasks: int
    # the mechanism with the component on and off (MECHANISMS): each row shows its own switched off
    mechanism_full: dict[str, float | None] = field(default_factory=dict)
    mechanism_without: dict[str, float | None] = field(default_factory=dict)


@dataclass
class Results(Contract):
    """A benchmark run: which tasks, where it ran, and each configuration's figures."""

    suite: dict[str, Any]  # name, n, digest of the tasks and their references
    seed: int | None
    task_ids: list[str]
    formula: str
    environment: dict[str, Any]
    configurations: list[Configuration]
    created_at: float
    impact: list[ComponentImpact] = field(default_factory=list)  # filled when the run is an ablation

    SCHEMA = SCHEMA
