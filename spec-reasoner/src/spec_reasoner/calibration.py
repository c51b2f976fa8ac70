"""Whether step drafting can pay for one model pair on this backend, and which block drafter each domain gets: measured
once, on a fixed calibration set, and cached; never guessed.

1. Can the oracle tell a right step from a wrong one? For every pair of CALIBRATION (a task, a right next step, a
   wrong one) both criteria are read: the 0-9 rating the loop asks for, and the oracle's own mean token
   log-probability of the step (one prompt-logprobs pass). A criterion's discrimination is the share of pairs it
   ranks right above wrong (ties count half): 0.5 is chance. The bench measured why this matters: with a verifier
   that cannot tell, every speculative arm was slower than the oracle alone (spec-reasoner/README.md).
2. Does drafting cost less than it saves? A round of k drafted steps of s tokens costs k*s*t_draft and saves
   E[accepted]*s*t_oracle, E at a per-step acceptance of 1/2 (the prior the engine's block speculation uses too):
   it can pay only when k*t_draft < E*t_oracle, t the decode time per token measured on the same backend.
3. Which block drafter the record's calls get, per domain: each drafter's mean accepted length on an oracle
   generation of the domain's calibration prompt (a full block every pass, so the figure is the drafter's, not the
   engine's adaptive choice); the best one if a pass then yields at least MIN_ACCEPTED_LENGTH tokens, else none.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from mimo_core.client import LLMClient
from mimo_core.contract import Contract, ContractError
from mimo_core.extensions import MimoRequest, PrecisionRequest, SpeculationRequest
from mimo_core.prompts import shared_prefix
from mimo_core.provenance import measured_on
from mimo_core.record import TaskRecord
from mimo_core.settings import Settings
from mimo_core.stage import StageContext

from . import prompts
from .scoring import TOP_LOGPROBS, digit_score, span_logprob
from .section import Criterion

VERSION = 2  # of the cached files: a new calibration set or rule invalidates old measurements
MIN_DISCRIMINATION = 0.75  # a criterion right on 3 pairs in 4 can keep good steps and reject bad ones
PRIOR_ACCEPTANCE = 0.5
BLOCK = 8  # MiMo's DFlash block
DRAFTERS = ("ngram", "suffix")  # the block drafters any engine runs without a draft model of its own
MIN_ACCEPTED_LENGTH = 2.0  # tokens per verification pass below which drafting is not worth a try
SPEED_TOKENS = 24  # tokens generated to time a model, and an oracle generation per drafter

# (domain, task, right next step, wrong next step): steps a verifier worth the name tells apart
CALIBRATION: tuple[tuple[str, str, str, str], ...] = (
    ("math", "Tom has 49 apples and buys 30 more. How many apples does he have?",
     "49 + 30 = 79, so Tom has 79 apples.", "49 + 30 = 89, so Tom has 89 apples."),
    ("math", "A box holds 12 eggs. How many eggs are in 8 boxes?",
     "8 boxes hold 12 * 8 = 96 eggs.", "8 boxes hold 12 * 8 = 86 eggs."),
    ("math", "Sara reads 15 pages a day. How many pages does she read in 6 days?",
     "In 6 days she reads 15 * 6 = 90 pages.", "In 6 days she reads 15 * 6 = 75 pages."),
    ("math", "A shirt costs $40 and is 25% off. What is the sale price?",
     "25% of $40 is $10, so the sale price is $40 - $10 = $30.",
     "25% of $40 is $15, so the sale price is $40 - $15 = $25."),
    ("math", "A school has 120 students and one third of them walk to school. How many walk?",
     "One third of 120 is 120 / 3 = 40 students.", "One third of 120 is 120 / 3 = 60 students."),
    ("triage", "A 67-year-old man is unresponsive, not breathing and has no pulse.",
     "He needs immediate life-saving intervention (CPR), so this is ESI level 1.",
     "He is stable and needs no resources, so this is ESI level 5."),
    ("triage", "A 25-year-old asks for a refill of her usual prescription; her vital signs are normal.",
     "She needs no resources beyond the visit, so this is ESI level 5.",
     "She needs immediate life-saving intervention, so this is ESI level 1."),
    ("triage", "A 58-year-old man has had crushing chest pain and sweating for 20 minutes.",
     "Chest pain like this may be a heart attack: a high-risk situation, ESI level 2.",
     "Chest pain is minor and needs no resources: ESI level 5."),
    ("coding", "def is_even(n: int) -> bool:\n    \"\"\"Return True when n is even.\"\"\"\n",
     "    return n % 2 == 0", "    return n % 2 == 1"),
    ("coding", "def largest(xs: list[int]) -> int:\n    \"\"\"Return the largest item of a non-empty list.\"\"\"\n",
     "    return max(xs)", "    return min(xs)"),
)


# A calibration measures the model pair, not the record that happens to trigger it: native weights, no drafting.
MEASURED = MimoRequest(precision=PrecisionRequest("native"), speculation=SpeculationRequest("none"))


# One task per domain to time the block drafters on, none of them in CALIBRATION (see `drafter_lengths`).
DRAFTING_TASKS = {
    "math": "A baker makes 24 rolls an hour for 6 hours and sells 100 of them. How many rolls are left?",
    "triage": "A 40-year-old man cut his hand on glass an hour ago; the bleeding is controlled and his vital signs "
              "are normal.",
    "coding": "def count_vowels(text: str) -> int:\n    \"\"\"Return how many letters of text are vowels.\"\"\"\n",
    "general": "Name the largest planet of the solar system and say why it is the largest.",
}


def _record(domain: str, task: str) -> TaskRecord:
    return TaskRecord.from_dict({"id": "calibration", "domain": domain, "task": task})


@dataclass
class CriterionFigures(Contract):
    """One criterion on the calibration set: its values for right and wrong steps, and how often it ranks right
    above wrong; `threshold` is the value a step needs to be accepted (midway between the two means)."""

    right: list[float | None]
    wrong: list[float | None]
    discrimination: float
    threshold: float | None


@dataclass
class Calibration(Contract):
    """One model pair on one backend: both criteria, the models' decode speed, and the decision."""

    SCHEMA = "mimo.spec-calibration/1"

    version: int
    backend: str
    draft_model: str
    oracle_model: str
    criteria: dict[str, CriterionFigures]
    ms_per_token: dict[str, float | None]  # draft, oracle
    criterion: Criterion | None  # the better criterion, when it discriminates
    step_drafting: bool
    reason: str


@dataclass
class Drafters(Contract):
    """Each block drafter's mean accepted length on one oracle, per domain (`drafter_lengths`)."""

    SCHEMA = "mimo.spec-drafters/1"

    version: int
    oracle_model: str
    domains: dict[str, dict[str, float | None]] = field(default_factory=dict)  # domain -> drafter -> length


def discrimination(right: list[float | None], wrong: list[float | None]) -> float:
    """The share of pairs ranked right above wrong, ties (and a missing value) half."""
    wins = [1.0 if r is not None and w is not None and r > w else 0.0 if r is not None and w is not None and r < w
            else 0.5 for r, w in zip(right, wrong)]
    return round(sum(wins) / len(wins), 4) if wins else 0.5


def _figures(right: list[float | None], wrong: list[float | None]) -> CriterionFigures:
    known_right = [v for v in right if v is not None]
    known_wrong = [v for v in wrong if v is not None]
    threshold = (round((sum(known_right) / len(known_right) + sum(known_wrong) / len(known_wrong)) / 2, 4)
                 if known_right and known_wrong else None)
    return CriterionFigures([_round(v) for v in right], [_round(v) for v in wrong], discrimination(right, wrong),
                            threshold)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def expected_accepted(k: int, acceptance: float = PRIOR_ACCEPTANCE) -> float:
    """Expected accepted steps of a round of k, each accepted with `acceptance` after the ones before it."""
    return sum(acceptance ** i for i in range(1, k + 1))


def drafting_pays(k: int, draft_ms: float | None, oracle_ms: float | None) -> bool:
    """Whether k drafted steps cost less draft time than the oracle time their expected acceptance saves."""
    return draft_ms is not None and oracle_ms is not None and k * draft_ms < expected_accepted(k) * oracle_ms


async def ratings(ctx: StageContext, model: str, items: list[tuple[TaskRecord, str]]) -> list[float | None]:
    """The 0-9 rating of the last step of each (record, solution)."""
    results = await asyncio.gather(*(ctx.complete(prompts.rate_text(record, solution), model=model, max_tokens=1,
                                                  echo=False, logprobs=TOP_LOGPROBS, override=MEASURED)
                                     for record, solution in items))
    return [digit_score(r.logprobs[0][0].top_logprobs)[0] if r.logprobs and r.logprobs[0] else None for r in results]


async def logprobs(ctx: StageContext, model: str, items: list[tuple[TaskRecord, str, str]]) -> list[float | None]:
    """The oracle's mean token log-probability of `step`, the end of `solution`, for each (record, solution, step)."""
    texts = [prompts.continue_text(record, solution) for record, solution, _ in items]
    results = await asyncio.gather(*(ctx.complete(text, model=model, max_tokens=1, echo=True, logprobs=1,
                                                  override=MEASURED) for text in texts))
    return [span_logprob(r.logprobs[0] if r.logprobs else [], len(text) - len(step), len(text))
            for r, text, (_, _, step) in zip(results, texts, items)]


async def ms_per_token(ctx: StageContext, model: str) -> float | None:
    """Decode milliseconds per token of `model`, from the engine's report (else the request's latency)."""
    record = _record("math", CALIBRATION[0][1])
    result = await ctx.chat(shared_prefix(record), model=model, max_tokens=SPEED_TOKENS, temperature=0.0,
                            override=MEASURED)
    tokens = result.usage.completion_tokens
    decode_s = (result.engine or {}).get("decode_s")
    seconds = decode_s if isinstance(decode_s, (int, float)) and decode_s > 0 else result.latency_s
    return round(1000 * seconds / tokens, 3) if tokens else None


async def measure(ctx: StageContext, draft: str, oracle: str, k: int) -> Calibration:
    """Calibrate a model pair (see the module docstring)."""
    pairs = [(_record(domain, task), right, wrong) for domain, task, right, wrong in CALIBRATION]
    rating_right = await ratings(ctx, oracle, [(record, right) for record, right, _ in pairs])
    rating_wrong = await ratings(ctx, oracle, [(record, wrong) for record, _, wrong in pairs])
    lp_right = await logprobs(ctx, oracle, [(record, right, right) for record, right, _ in pairs])
    lp_wrong = await logprobs(ctx, oracle, [(record, wrong, wrong) for record, _, wrong in pairs])
    criteria = {"rating": _figures(rating_right, rating_wrong), "logprob": _figures(lp_right, lp_wrong)}
    best = max(criteria, key=lambda name: criteria[name].discrimination)
    speed = {"draft": await ms_per_token(ctx, draft), "oracle": await ms_per_token(ctx, oracle)}
    tells = criteria[best].discrimination >= MIN_DISCRIMINATION and criteria[best].threshold is not None
    pays = drafting_pays(k, speed["draft"], speed["oracle"])
    if not tells:
        reason = (f"the oracle cannot tell right steps from wrong ones: it ranks {criteria[best].discrimination:.0%} "
                  f"of the calibration pairs right by its {best} (needs {MIN_DISCRIMINATION:.0%})")
    elif not pays:
        reason = (f"drafting costs more than it saves: {k} drafted steps at {speed['draft']} ms a token against "
                  f"{expected_accepted(k):.2f} expected accepted at the oracle's {speed['oracle']} ms")
    else:
        reason = f"the oracle's {best} tells right from wrong ({criteria[best].discrimination:.0%}) and drafting pays"
    return Calibration(VERSION, backend_name(ctx), draft, oracle, criteria, speed, best if tells else None,
                       tells and pays, reason)


async def drafter_lengths(ctx: StageContext, oracle: str, domain: str) -> dict[str, float | None]:
    """Each block drafter's mean accepted length on an oracle generation of the domain's drafting prompt. `suffix`
    goes first: it looks up the engine's recent text, so a generation of the same prompt before it (or a prompt the
    calibration already showed the engine) would hand it the answer; `ngram` reads only the sequence's own tokens."""
    record = _record(domain if domain in DRAFTING_TASKS else "general", DRAFTING_TASKS.get(domain,
                                                                                          DRAFTING_TASKS["general"]))
    lengths: dict[str, float | None] = {}
    for method in sorted(DRAFTERS, key=lambda m: m != "suffix"):
        result = await ctx.chat(shared_prefix(record), model=oracle, max_tokens=SPEED_TOKENS * 2, temperature=0.0,
                                override=MimoRequest(precision=PrecisionRequest("native"),
                                                     speculation=SpeculationRequest(method, BLOCK, adaptive=False)))
        report = (result.engine or {}).get("speculation") or {}
        length = report.get("mean_accepted_length")
        lengths[method] = float(length) if isinstance(length, (int, float)) and report.get("verification_passes") \
            else None
    return lengths


async def calibrate(settings: Settings, draft: str, oracle: str, k: int, domains: list[str], afresh: bool = True
                    ) -> tuple[Calibration, Drafters | None]:
    """Measure (draft, oracle) on the settings' backend, and the block drafters of `domains` where it takes them
    (`afresh`: whatever is kept; else only what is missing), and keep both where the stage finds them (for the CLI:
    calibrating before a run keeps it untimed)."""
    client = LLMClient(settings)
    ctx = StageContext(settings, lambda: client)
    calibrations = Calibrations(k)
    try:
        pair = await calibrations.pair(ctx, draft, oracle, afresh=afresh)
        drafters = (await calibrations.drafters(ctx, oracle, domains, afresh=afresh)
                    if domains and settings.send_extensions else None)
        return pair, drafters
    finally:
        await client.close()


def backend_name(ctx: StageContext) -> str:
    """What the calibration is valid for: the embedded engine of this version, or the remote endpoint's address."""
    return measured_on(ctx.settings)


class Calibrations:
    """Calibrations of this process, read from and kept in MIMO_CACHE_DIR/calibrations (one file per model pair and
    backend, one per oracle for its drafters), measured on first use; concurrent records wait for one measurement."""

    def __init__(self, k: int) -> None:
        self.k = k
        self._pairs: dict[Path, Calibration] = {}
        self._drafters: dict[Path, Drafters] = {}
        self._lock = asyncio.Lock()

    def _path(self, ctx: StageContext, kind: str, *key: object) -> Path:
        name = hashlib.blake2b(json.dumps([backend_name(ctx), *key]).encode(), digest_size=8).hexdigest()
        return ctx.settings.cache_dir / "calibrations" / f"spec-reasoner-{kind}-{name}.json"

    async def pair(self, ctx: StageContext, draft: str, oracle: str, afresh: bool = False) -> Calibration:
        """The calibration of (draft, oracle) on this backend (`afresh`: measured again, whatever is kept)."""
        path = self._path(ctx, "calibration", draft, oracle, self.k)
        async with self._lock:
            if path not in self._pairs or afresh:
                found = None if afresh else _read(Calibration, path)
                self._pairs[path] = found or await measure(ctx, draft, oracle, self.k)
                if found is None:
                    _write(path, self._pairs[path])
            return self._pairs[path]

    async def drafters(self, ctx: StageContext, oracle: str, domains: list[str], afresh: bool = False) -> Drafters:
        """Each block drafter's accepted length on `oracle`, for `domains`: measured once per domain (`afresh`:
        again)."""
        path = self._path(ctx, "drafters", oracle)
        async with self._lock:
            known = self._drafters.setdefault(path, (None if afresh else _read(Drafters, path))
                                              or Drafters(VERSION, oracle))
            missing = [d for d in domains if d not in known.domains or afresh]
            for domain in missing:
                known.domains[domain] = await drafter_lengths(ctx, oracle, domain)
            if missing:
                _write(path, known)
            return known

    async def drafter(self, ctx: StageContext, oracle: str, domain: str) -> tuple[str, str]:
        """The block drafter for the domain's calls on `oracle`, and why."""
        known = await self.drafters(ctx, oracle, [domain])
        lengths = {m: v for m, v in known.domains[domain].items() if v is not None}
        if not lengths:
            return "none", "the backend reported no speculation: it cannot draft per request"
        method = max(lengths, key=lengths.__getitem__)
        if lengths[method] < MIN_ACCEPTED_LENGTH:
            return "none", (f"no drafter pays on {domain} prompts: the best, {method}, accepted "
                            f"{lengths[method]:.2f} tokens a pass (needs {MIN_ACCEPTED_LENGTH})")
        return method, f"{method} accepted {lengths[method]:.2f} tokens a pass on {domain} prompts (block {BLOCK})"


def _read(kind: type, path: Path):
    """A cached measurement of the current version, or None (none yet, another version, or a damaged file)."""
    try:
        found = kind.load(path)
    except ContractError:
        return None
    return found if found.version == VERSION else None


def _write(path: Path, measured: Contract) -> None:
    """Atomically, so that a killed process leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(measured.to_dict(), indent=1))
    os.replace(tmp, path)
