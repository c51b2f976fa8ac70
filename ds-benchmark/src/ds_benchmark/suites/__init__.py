"""The task suites: N records split evenly over the domains, reproducible from one seed."""

from __future__ import annotations

import random
from pathlib import Path

from mimo_core.record import TaskRecord

from . import coding, math, triage

DOMAINS = ("math", "coding", "triage")
MATH_SOURCES = ("gsm8k", "templates")


def split(n: int, domains: list[str]) -> dict[str, int]:
    """`n` tasks over `domains` as evenly as possible; the first domains take the remainder."""
    base, extra = divmod(n, len(domains))
    return {domain: base + (i < extra) for i, domain in enumerate(domains)}


def build_suite(n: int, domains: list[str], seed: int, gsm8k: Path | None = None,
                math_source: str = "gsm8k") -> list[TaskRecord]:
    """The suite's records, interleaved across domains; each domain draws from its own seeded generator.

    Math comes from GSM8K's test set (`math_source="gsm8k"`, or the GSM8K-format file `gsm8k`) or our templates."""
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
    per_domain = {}
    for domain, count in split(n, domains).items():
        # A string seed is hashed deterministically, and one generator per domain keeps a domain's tasks the same
        # whatever other domains are asked for.
        rng = random.Random(f"{seed}:{domain}")
        if domain == "math" and (gsm8k or math_source == "gsm8k"):
            items = math.generate_gsm8k(count, rng, gsm8k or math.GSM8K)
        else:
            items = {"math": math.generate, "coding": coding.generate, "triage": triage.generate}[domain](count, rng)
        per_domain[domain] = [
            TaskRecord(id=f"{domain}-{i:04d}", domain=domain, task=task, difficulty=difficulty, reference=reference,
                       config=dict(config))
            for i, (task, reference, difficulty) in enumerate(items)
        ]
    longest = max(len(records) for records in per_domain.values())
    return [records[i] for i in range(longest) for records in per_domain.values() if i < len(records)]
