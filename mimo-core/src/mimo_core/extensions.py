"""The `mimo` extension of the OpenAI API, shared by the client and the embedded engine.

A request may carry `mimo` in its body (through the openai client's `extra_body`): what it asks of the engine's
precision, KV cache and speculation. Every response carries `mimo` back: what the engine did. Both are contracts,
validated on read, so an unknown or misspelled field is an error (the engine answers 400) rather than a silent no-op.

Each figure of the report is declared here once, with its help text and how the engine's `/metrics` aggregates it
(`figure(...)`): a counter sums it over requests, a histogram observes it once per request.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from .contract import Contract

# The block drafters and what each does. Declared here, at the bottom of the layers, because the request contract
# below must name them and mimo_core imports no tool; the engine keys its drafter factories by these names
# (`mimo_engine.speculation.DRAFTER_FACTORIES`, a test checks that every name has one), and its CLI help derives
# from them. A new drafter is one entry here and one factory there.
DRAFTERS = {
    "ngram": "prompt lookup: continues the sequence as it went on after an earlier occurrence of its last tokens",
    "suffix": "the longest suffix matched in the engine's recent sequences, followed while it stays likely",
    "draft-model": "a smaller model with the target's tokenizer (serve --draft-model NAME)",
    "self-mxfp4": "the target's own MXFP4 weights draft, the weights it serves verify",
}
SPECULATION_METHODS = ("none", *DRAFTERS)  # "none": plain decoding
MAX_SPECULATION_BLOCK = 16

MetricKind = Literal["counter", "histogram"]


def figure(help: str, metric: MetricKind | None = "counter", default: Any = 0) -> Any:
    """A report field that is also a server-wide metric: its help text and how `/metrics` aggregates it."""
    return field(default=default, metadata={"help": help, "metric": metric})


def figures(report_type: type) -> list[dataclasses.Field]:
    """The fields of a report dataclass that `/metrics` aggregates."""
    return [f for f in dataclasses.fields(report_type) if f.metadata.get("metric")]


# ---------------------------------------------------------------- what a request asks


@dataclass
class PrecisionRequest(Contract):
    """Which weight-precision policy to run the request under (the engine lists the policies it has)."""

    policy: str = "native"


@dataclass
class CacheRequest(Contract):
    """Whether the request may reuse cached prompt blocks (`false`: it prefills every prompt token)."""

    enabled: bool = True


@dataclass
class SpeculationRequest(Contract):
    """Block speculative decoding: which drafter proposes tokens, and at most how many per verification pass (the
    engine drafts fewer when a sequence's recent drafts were rejected or the batch is compute-bound)."""

    method: Literal[SPECULATION_METHODS]  # type: ignore[valid-type]  # the names are declared once, above
    block: int = 8
    adaptive: bool = True  # false: always draft `block` tokens, paid off or not (what an acceptance table measures)

    def __post_init__(self) -> None:
        if not 1 <= self.block <= MAX_SPECULATION_BLOCK:
            raise ValueError(f"speculation.block must be 1..{MAX_SPECULATION_BLOCK}, not {self.block}")


@dataclass
class MimoRequest(Contract):
    """The `mimo` field of a request body."""

    precision: PrecisionRequest | None = None
    cache: CacheRequest | None = None
    speculation: SpeculationRequest | None = None

    @property
    def cache_enabled(self) -> bool:
        """Whether prefix reuse is on for this request (it is unless asked off)."""
        return self.cache is None or self.cache.enabled


# ---------------------------------------------------------------- what the engine reports


@dataclass
class CacheReport(Contract):
    """Prompt tokens served from cached blocks (in all, and by the tier each block was found in) and prompt tokens
    computed, for one request."""

    enabled: bool = True
    cached_tokens: int = figure("prompt tokens served from cached KV blocks instead of being prefilled")
    prefilled_tokens: int = figure("prompt tokens computed by prefill")
    hbm_hit_tokens: int = figure("prompt tokens served from KV blocks found in the engine's pool (tier hbm)")
    dram_hit_tokens: int = figure("prompt tokens served from KV blocks brought up from the host tier (dram)")
    disk_hit_tokens: int = figure("prompt tokens served from KV blocks brought up from the disk tier")


@dataclass
class PrecisionReport(Contract):
    """The weight formats a request's computed tokens read (prompt and generated), for one request: tokens per
    format per layer group (`attn`, `mlp`, `head`), and the weight bytes the products read for them, each token
    counted with every byte of the forms it read (a product shared by several tokens is counted for each)."""

    policy: str = "native"
    # an entropy policy's thresholds as this model calibrated them: layer group -> the entropy (nats) of the previous
    # next-token distribution below which a token reads the low format ("always" / "never" at the ends); empty for
    # a static policy
    thresholds: dict[str, float | str] = field(default_factory=dict)
    tokens: dict[str, dict[str, int]] = field(default_factory=dict)  # layer group -> format -> tokens
    weight_bytes: int = figure("weight bytes read for computed tokens (every byte of the forms each token read)")
    weights_read: int = figure("weights (parameters) read for computed tokens; 8 * weight_bytes / weights_read is "
                               "the average bits per weight read")
    bits_per_weight: float = 0.0  # 8 * weight_bytes / weights_read
    weight_bytes_per_token: float = 0.0

    def count(self, formats: dict[str, set[str]], weight_bytes: int, weights: int, tokens: int) -> None:
        """Add `tokens` tokens that read `formats` (layer group -> formats), `weight_bytes` bytes of `weights`
        parameters each."""
        for group, names in formats.items():
            row = self.tokens.setdefault(group, {})
            for name in names:
                row[name] = row.get(name, 0) + tokens
        self.weight_bytes += weight_bytes * tokens
        self.weights_read += weights * tokens
        self._derive()

    def _derive(self) -> None:
        self.bits_per_weight = round(8 * self.weight_bytes / self.weights_read, 4) if self.weights_read else 0.0
        computed = sum(next(iter(self.tokens.values()), {}).values())  # every token reads every group once
        self.weight_bytes_per_token = round(self.weight_bytes / computed, 1) if computed else 0.0

    @classmethod
    def combine(cls, reports: list[PrecisionReport]) -> PrecisionReport:
        """One report over several prompts of a request."""
        out = cls(policy=reports[0].policy, thresholds=dict(reports[0].thresholds))  # one policy, one model
        for r in reports:
            for group, counts in r.tokens.items():
                row = out.tokens.setdefault(group, {})
                for name, n in counts.items():
                    row[name] = row.get(name, 0) + n
            out.weight_bytes += r.weight_bytes
            out.weights_read += r.weights_read
        out._derive()
        return out


@dataclass
class SpeculationReport(Contract):
    """Block speculation for one request: the drafter, the most tokens it could draft per pass, and what was drafted,
    accepted and verified. A verification pass is a decode step that checked a drafted block; it yields the accepted
    tokens plus one of the target's own, so `mean_accepted_length` counts that token too, as DFlash and EAGLE do."""

    method: str = "none"
    block: int = 0
    adaptive: bool = True
    drafted_tokens: int = figure("tokens proposed by a drafter and checked by the target")
    accepted_tokens: int = figure("drafted tokens the target accepted")
    verification_passes: int = figure("decode steps that verified a drafted block")
    plain_steps: int = figure("decode steps of speculating sequences that drafted nothing: no proposal, or "
                              "speculation turned down because it would not have paid")
    draft_s: float = figure("seconds spent drafting (a draft model's passes, lookups)", "counter", 0.0)
    mean_accepted_length: float = 0.0  # (accepted_tokens + verification_passes) / verification_passes
    acceptance_rate: float = 0.0  # accepted_tokens / drafted_tokens

    def count(self, drafted: int, accepted: int) -> None:
        """Add one verification pass of `drafted` tokens of which `accepted` were accepted."""
        self.drafted_tokens += drafted
        self.accepted_tokens += accepted
        self.verification_passes += 1
        self._derive()

    def _derive(self) -> None:
        passes = self.verification_passes
        self.mean_accepted_length = round((self.accepted_tokens + passes) / passes, 4) if passes else 0.0
        self.acceptance_rate = round(self.accepted_tokens / self.drafted_tokens, 4) if self.drafted_tokens else 0.0

    @classmethod
    def combine(cls, reports: list[SpeculationReport]) -> SpeculationReport:
        """One report over several prompts of a request."""
        out = cls(method=reports[0].method, block=reports[0].block, adaptive=reports[0].adaptive)
        for r in reports:
            for name in ("drafted_tokens", "accepted_tokens", "verification_passes", "plain_steps"):
                setattr(out, name, getattr(out, name) + getattr(r, name))
            out.draft_s = round(out.draft_s + r.draft_s, 6)
        out._derive()
        return out


@dataclass
class MimoReport(Contract):
    """The `mimo` field of a response: what the engine did for the request, summed over its prompts."""

    SCHEMA = "mimo.engine-report/1"

    model: str
    prompt_tokens: int = figure("prompt tokens, counted once a request's prompt is prefilled (cached ones included; a "
                                "request cancelled later still counts)")
    completion_tokens: int = figure("tokens generated, counted as each is sampled (a request cancelled later still "
                                    "counts)")
    load_s: float = figure("seconds spent loading the model for the request (lazily loaded models)", "histogram", 0.0)
    queued_s: float = figure("seconds from arrival to the first scheduled step", "histogram", 0.0)
    time_to_first_token_s: float = figure("seconds from arrival to the first generated token", "histogram", 0.0)
    prefill_s: float = figure("seconds of forward passes spent on the request's prompt", None, 0.0)
    decode_s: float = figure("seconds of forward passes while the request was decoding", None, 0.0)
    duration_s: float = figure("seconds from arrival to the last token", "histogram", 0.0)
    steps: int = figure("engine steps the request took part in", None)
    batch_sizes: list[int] = field(default_factory=list)  # the distinct numbers of sequences its steps ran with
    cache: CacheReport = field(default_factory=CacheReport)
    precision: PrecisionReport = field(default_factory=PrecisionReport)
    speculation: SpeculationReport = field(default_factory=SpeculationReport)

    @classmethod
    def combine(cls, reports: list[MimoReport]) -> MimoReport:
        """One report over several prompts of a request: counts add up; times, which overlap, take the longest."""
        first = reports[0]
        out = cls(model=first.model, batch_sizes=sorted(set().union(*(r.batch_sizes for r in reports))),
                  cache=CacheReport(first.cache.enabled),
                  speculation=SpeculationReport.combine([r.speculation for r in reports]),
                  precision=PrecisionReport.combine([r.precision for r in reports]))
        for part, parts in ((out, reports), (out.cache, [r.cache for r in reports])):
            for f in dataclasses.fields(part):
                values = [getattr(p, f.name) for p in parts]
                if type(values[0]) is int:
                    setattr(part, f.name, sum(values))
                elif type(values[0]) is float:
                    setattr(part, f.name, max(values))
        return out
