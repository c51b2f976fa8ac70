"""The `route` stage: pick each record's precision from its domain and a short entropy probe, and keep it only where
it pays.

On the embedded engine the choice is a policy (`entropy@B`: the tokens of low next-token entropy read MXFP4 weights,
targeting B bits per weight) and every later call of the record runs under it. A policy pays when it reads fewer
bytes than `native` and decodes no slower: measured once per model and policy in this process (`Costs`), on the
same calls, never assumed. Where it does not pay, the record runs `native` and says why; on this CPU decoding MXFP4
codes, not memory, limits speed (precision-router/README.md), so that is the measured answer here.

On a remote server the choice is a deployment: MIMO_PRECISION_MODELS maps formats to served models (the same model
deployed in FP8 and MXFP4, say), and the record goes to the deployment with the fewest bits that still meet its
target. Without a mapping the server offers one precision and the record says so.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from mimo_core.client import LLMClient
from mimo_core.contract import Contract, ContractError
from mimo_core.extensions import MimoRequest, PrecisionRequest, SpeculationRequest
from mimo_core.prompts import shared_prefix
from mimo_core.provenance import measured_on
from mimo_core.record import TaskRecord
from mimo_core.settings import Settings
from mimo_core.stage import StageContext

from .formats import ALIASES, BITS
from .policy import GROUPS, LOW_FORMAT

PROBE_TOKENS = 8
TOP_LOGPROBS = 20
TARGET_BITS = {"math": 7.0, "coding": 7.0, "triage": 6.0, "general": 5.5}  # exact answers get more bits
UNCERTAIN_NATS = 2.0  # a probe this uncertain on average gets one more bit per weight
NATIVE = "native"
SAVING = 0.95  # a policy must read under 95% of native's bytes: a few percent fewer bytes is not worth its quality
COST_TOKENS = 16  # tokens generated per timing call
# Interleaved native / policy rounds, medians, after an untimed call of each: a policy's first call can compile its
# kernels (the quickstart's costs once read native at 229.8 ms a token against 22.4 warm, the median of two rounds
# one of which compiled, and the router took entropy@6 for its triage records on that)
COST_ROUNDS = 3
COST_PROMPT = [{"role": "user", "content": "Count from one to twenty in words, separated by commas."}]
NO_MAPPING = ("the server offers one precision: MIMO_PRECISION_MODELS maps formats to the served models of other "
              "precisions")


def probe_entropy(logprobs: list) -> float:
    """Mean next-token entropy (nats) of probe tokens, from their top logprobs (the rest of the mass as one)."""
    values = []
    for token in logprobs:
        ps = [math.exp(lp) for lp in token.top_logprobs.values()]
        rest = max(0.0, 1.0 - sum(ps))
        values.append(-sum(p * math.log(p) for p in ps + [rest] if p > 0))
    return sum(values) / len(values) if values else 0.0


def target_bits(domain: str, entropy: float | None) -> float:
    """The bits per weight a record's domain asks for, one more when the probe was uncertain."""
    return TARGET_BITS.get(domain, 6.0) + (1.0 if entropy is not None and entropy > UNCERTAIN_NATS else 0.0)


def choose_policy(domain: str, entropy: float) -> str:
    """The entropy policy with the domain's target bits, one more when the probe was uncertain."""
    return f"entropy@{target_bits(domain, entropy):g}"


def format_bits(name: str) -> float:
    """Bits per weight of a deployment's format name (its alias resolved); ValueError naming the known ones."""
    fmt = ALIASES.get(name, name)
    if fmt not in BITS:
        raise ValueError(f"MIMO_PRECISION_MODELS names {name!r}, not a format (known: "
                         f"{', '.join([*BITS, *ALIASES])})")
    return BITS[fmt]


def choose_deployment(deployments: dict[str, str], bits: float) -> str | None:
    """The format of the deployment with the fewest bits that still meet `bits`; None if none does (native)."""
    meeting = [(format_bits(name), name) for name in deployments if format_bits(name) >= bits]
    return min(meeting)[1] if meeting else None


@dataclass(frozen=True)
class Cost(Contract):
    """What one policy costs on this engine and model: bits per weight read and decode milliseconds per token."""

    bits_per_weight: float | None
    ms_per_token: float | None
    # an entropy policy's thresholds as the engine calibrated them for the model: layer group -> nats
    thresholds: dict[str, Any] | None = None


@dataclass
class CostTable(Contract):
    """The costs measured on one model: policy -> (native's cost, the policy's), measured side by side."""

    SCHEMA = "mimo.precision-costs/1"

    model: str
    costs: dict[str, list[Cost]] = field(default_factory=dict)


class Costs:
    """Each (model, policy)'s cost against native on the same prompt, interleaved: measured once and kept with the
    models' calibrations (MIMO_CACHE_DIR/calibrations), so a later run of the stage finds it."""

    def __init__(self) -> None:
        self._tables: dict[Path, CostTable] = {}
        self._lock = asyncio.Lock()

    def table(self, ctx: StageContext, model: str) -> tuple[Path, CostTable]:
        """Where `model`'s costs are kept, and those measured so far."""
        name = hashlib.blake2b(json.dumps([measured_on(ctx.settings), model]).encode(), digest_size=8).hexdigest()
        path = ctx.settings.cache_dir / "calibrations" / f"precision-router-costs-{name}.json"
        if path not in self._tables:
            try:
                self._tables[path] = CostTable.load(path)
            except ContractError:  # none kept yet, or a damaged file: measured again
                self._tables[path] = CostTable(model)
        return path, self._tables[path]

    async def against_native(self, ctx: StageContext, model: str, policy: str) -> tuple[Cost, Cost]:
        """(native's cost, the policy's cost) on `model`."""
        async with self._lock:
            path, table = self.table(ctx, model)
            if policy not in table.costs:
                for name in (NATIVE, policy):
                    await _cost(ctx, model, name)  # warm: untimed
                rounds = [[await _cost(ctx, model, name) for name in (NATIVE, policy)] for _ in range(COST_ROUNDS)]
                table.costs[policy] = [_median([r[i] for r in rounds]) for i in (0, 1)]
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(table.to_dict(), indent=1))
                os.replace(tmp, path)  # atomically: a killed process leaves the old table or the new one
            native, cost = table.costs[policy]
            return native, cost


async def _cost(ctx: StageContext, model: str, policy: str) -> Cost:
    """One timing call: COST_TOKENS generated under `policy`, without speculation (it would time the drafter)."""
    result = await ctx.chat(COST_PROMPT, model=model, max_tokens=COST_TOKENS, temperature=0.0,
                            override=MimoRequest(precision=PrecisionRequest(policy),
                                                 speculation=SpeculationRequest("none")))
    report = result.engine or {}
    bits = (report.get("precision") or {}).get("bits_per_weight")
    decode_s, tokens = report.get("decode_s"), result.usage.completion_tokens
    ms = 1000 * decode_s / (tokens - 1) if isinstance(decode_s, (int, float)) and tokens > 1 else None
    return Cost(bits if isinstance(bits, (int, float)) else None, ms,
                (report.get("precision") or {}).get("thresholds") or None)


def _median(costs: list[Cost]) -> Cost:
    def mid(values):
        known = [v for v in values if v is not None]
        return round(statistics.median(known), 4) if known else None

    return Cost(mid(c.bits_per_weight for c in costs), mid(c.ms_per_token for c in costs), costs[-1].thresholds)


def pays(native: Cost, policy: Cost) -> str | None:
    """None when the policy pays against native; else why not."""
    if None in (native.bits_per_weight, policy.bits_per_weight, native.ms_per_token, policy.ms_per_token):
        return "the engine did not report what the policy reads and how fast it decodes"
    if policy.bits_per_weight >= SAVING * native.bits_per_weight:
        return (f"it reads {policy.bits_per_weight:g} bits per weight against native's {native.bits_per_weight:g}: "
                f"about as many bytes, for lower quality")
    if policy.ms_per_token > native.ms_per_token:
        return (f"it decodes at {policy.ms_per_token:.1f} ms a token against native's {native.ms_per_token:.1f} on "
                f"this engine: fewer bytes, but slower")
    return None


class Router:
    """The stage's work (`route`): one per process, so each policy's cost is measured once. With `policy`, every
    record runs under that policy, chosen by the user rather than measured."""

    def __init__(self, costs: Costs | None = None, policy: str | None = None) -> None:
        self.costs = costs or Costs()
        self.policy = policy

    async def route(self, record: TaskRecord, ctx: StageContext) -> None:
        """Write `precision`: the policy (or deployment) later calls run under, the probe, and why."""
        if not ctx.settings.send_extensions:
            record.precision = await remote(record, ctx)
            return
        if self.policy is not None:
            record.precision = {"policy": self.policy, "backend": "engine", "reason": "--policy"}
            return
        # the probe deliberately runs native, whatever the plan holds: it measures the record, not a policy
        probe = await ctx.chat(shared_prefix(record), max_tokens=PROBE_TOKENS, logprobs=True,
                               top_logprobs=TOP_LOGPROBS, override=MimoRequest(precision=PrecisionRequest(NATIVE)))
        entropy = probe_entropy(probe.logprobs[0] if probe.logprobs else [])
        candidate = choose_policy(record.domain, entropy)
        report = (probe.engine or {}).get("precision", {})
        native, cost = await self.costs.against_native(ctx, ctx.settings.oracle_model, candidate)
        why_not = pays(native, cost)
        record.precision = {
            "policy": NATIVE if why_not else candidate,
            "candidate": candidate,
            "default_format": next(iter(report.get("tokens", {}).get("mlp", {NATIVE: 0})), NATIVE),
            "thresholds": cost.thresholds,
            "layers": {group: [LOW_FORMAT, NATIVE] for group in GROUPS},  # what an entropy policy picks between
            "probe": {"tokens": len(probe.logprobs[0]) if probe.logprobs else 0, "mean_entropy": round(entropy, 4),
                      "bits_per_weight": report.get("bits_per_weight")},
            "cost": {NATIVE: {"bits_per_weight": native.bits_per_weight, "ms_per_token": native.ms_per_token},
                     candidate: {"bits_per_weight": cost.bits_per_weight, "ms_per_token": cost.ms_per_token}},
            "stepped_aside": None if why_not is None else f"{candidate} does not pay: {why_not}",
            "backend": "engine",
        }


async def remote(record: TaskRecord, ctx: StageContext) -> dict:
    """The section on a remote server: the deployment meeting the record's target bits, or native and why."""
    deployments = dict(ctx.settings.precision_models or ())
    if not deployments:
        return {"policy": NATIVE, "deployment": None, "backend": "unsupported", "reason": NO_MAPPING}
    try:
        probe = await ctx.chat(shared_prefix(record), max_tokens=PROBE_TOKENS, logprobs=True,
                               top_logprobs=TOP_LOGPROBS)
        entropy = probe_entropy(probe.logprobs[0]) if probe.logprobs and probe.logprobs[0] else None
        note = None if entropy is not None else "the server returned no logprobs: chosen by domain alone"
    except openai.BadRequestError as exc:  # a server refusing logprobs still gets a deployment, by domain alone
        entropy, note = None, f"the server refused the probe's logprobs ({exc.status_code}): chosen by domain alone"
    bits = target_bits(record.domain, entropy)
    choice = choose_deployment(deployments, bits)
    return {"policy": choice or NATIVE, "deployment": deployments.get(choice) if choice else None,
            "target_bits": bits, "probe": {"mean_entropy": None if entropy is None else round(entropy, 4)},
            "deployments": deployments, "backend": "model-tier",
            "reason": note or (f"the deployment with the fewest bits meeting {bits:g}" if choice else
                               f"no deployment has {bits:g} bits or more: the native model")}


def candidates(domains: list[str]) -> list[str]:
    """Every policy `route` may choose for records of these domains (the domain's target, and one bit more)."""
    return sorted({f"entropy@{target_bits(d, None) + extra:g}" for d in domains for extra in (0.0, 1.0)})


async def calibrate(settings: Settings, domains: list[str]) -> CostTable | None:
    """Measure, and keep, what every candidate policy for these domains costs against native on the oracle (for the
    CLI: measuring before a benchmark keeps it untimed); None on a remote server, where no policy is measured."""
    if not settings.send_extensions:
        return None
    client = LLMClient(settings)
    ctx, costs = StageContext(settings, lambda: client), Costs()
    try:
        for policy in candidates(domains):
            await costs.against_native(ctx, settings.oracle_model, policy)
    finally:
        await client.close()
    return costs.table(ctx, settings.oracle_model)[1]


def baseline(record: TaskRecord, ctx: StageContext) -> None:
    """Component disabled: the model's native precision, no routing."""
    record.precision = {"policy": NATIVE, "backend": "engine" if ctx.settings.send_extensions else "model-tier"}
