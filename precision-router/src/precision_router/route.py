"""The `route` stage: pick each record's precision policy from its domain and a short entropy probe."""

from __future__ import annotations

import math

from mimo_core.extensions import MimoRequest, PrecisionRequest
from mimo_core.prompts import shared_prefix
from mimo_core.record import TaskRecord
from mimo_core.stage import StageContext

PROBE_TOKENS = 8
TOP_LOGPROBS = 20
TARGET_BITS = {"math": 7.0, "coding": 7.0, "triage": 6.0, "general": 5.5}  # exact answers get more bits
UNCERTAIN_NATS = 2.0  # a probe this uncertain on average gets one more bit per weight
NOT_ON_REMOTE = ("a remote OpenAI-compatible server chooses its own weight precision; per-token routing needs the "
                 "embedded engine")


def probe_entropy(logprobs: list) -> float:
    """Mean next-token entropy (nats) of probe tokens, from their top logprobs (the rest of the mass as one)."""
    values = []
    for token in logprobs:
        ps = [math.exp(lp) for lp in token.top_logprobs.values()]
        rest = max(0.0, 1.0 - sum(ps))
        values.append(-sum(p * math.log(p) for p in ps + [rest] if p > 0))
    return sum(values) / len(values) if values else 0.0


def choose_policy(domain: str, entropy: float) -> str:
    """The entropy policy with the domain's target bits, one more when the probe was uncertain."""
    bits = TARGET_BITS.get(domain, 6.0) + (1.0 if entropy > UNCERTAIN_NATS else 0.0)
    return f"entropy@{bits:g}"


async def route(record: TaskRecord, ctx: StageContext) -> None:
    """Write `precision`: the policy, what the engine reported for it, and the probe's entropy."""
    if not ctx.settings.embedded:
        record.precision = {"policy": None, "backend": "unsupported", "reason": NOT_ON_REMOTE}
        return
    probe = await ctx.chat(shared_prefix(record), max_tokens=PROBE_TOKENS, logprobs=True, top_logprobs=TOP_LOGPROBS,
                           override=MimoRequest(precision=PrecisionRequest("native")))
    entropy = probe_entropy(probe.logprobs[0] if probe.logprobs else [])
    name = choose_policy(record.domain, entropy)
    report = (probe.engine or {}).get("precision", {})
    # One token under the chosen policy: the engine says the thresholds it calibrated for this model (the prompt
    # runs native, so its blocks come from the probe's cache).
    chosen = await ctx.chat(shared_prefix(record), max_tokens=1, override=MimoRequest(precision=PrecisionRequest(name)))
    record.precision = {
        "policy": name,
        "default_format": next(iter(report.get("tokens", {}).get("mlp", {"native": 0})), "native"),
        "thresholds": ((chosen.engine or {}).get("precision") or {}).get("thresholds") or None,
        "layers": {"attn": ["mxfp4", "native"], "mlp": ["mxfp4", "native"], "head": ["mxfp4", "native"]},
        "probe": {"tokens": len(probe.logprobs[0]) if probe.logprobs else 0, "mean_entropy": round(entropy, 4),
                  "bits_per_weight": report.get("bits_per_weight")},
        "backend": "engine",
    }


def baseline(record: TaskRecord, ctx: StageContext) -> None:
    """Component disabled: the model's native precision, no routing."""
    record.precision = {"policy": "native", "backend": "engine" if ctx.settings.embedded else "unsupported"}
