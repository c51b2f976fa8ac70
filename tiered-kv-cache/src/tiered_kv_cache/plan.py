"""`tiered-kv-cache plan`: the pipeline stage that warms a record's shared prefix in the engine and writes `kv`.

Every later call about a record starts with the same messages (`mimo_core.prompts.shared_prefix`: system prompt and
task). Warming sends them once, before the agents and the reasoner fan out, as a chat request for one token: the
engine prefills the prefix (the one token comes from that prefill's last logits, so nothing is decoded) and keeps its
blocks, in whichever tier they end up; every later call finds them instead of prefilling them again. Warming once
first matters most when many calls start together: each would otherwise prefill the same prefix at the same time.

A disabled component does the baseline: no warming, `kv.enabled: false` (later stages send `mimo.cache.enabled:
false`, so every call prefills from scratch). Against a remote endpoint the tiers do not exist: the section says
`backend: "unsupported"` and why, and no call is made (the server's own prefix cache serves the record's first call).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from mimo_core.contract import Contract
from mimo_core.extensions import CacheRequest, MimoRequest
from mimo_core.prompts import shared_prefix
from mimo_core.record import TaskRecord
from mimo_core.stage import StageContext, run_stage
from tiered_kv_cache.tiers import TIERS

STAGE = "tiered-kv-cache"
REMOTE_REASON = ("MIMO_BASE_URL points at a remote server: the KV tiers live in the embedded engine, so nothing was "
                 "warmed; the server's own prefix cache, if it has one, serves the prefix after the record's first call")
NO_REPORT_REASON = "the server answered without the engine's mimo.cache report: its cache tiers are unknown"


@dataclass
class Warmed(Contract):
    """One model's warm request: prompt tokens of the prefix, those already cached (by tier), and its wall time."""

    prefix_tokens: int
    tier_hits: dict[str, int]
    wall_s: float


@dataclass
class KVSection(Contract):
    """The record's `kv` section. `prefix_tokens` and `tier_hits` are the first (oracle) model's."""

    enabled: bool
    backend: Literal["engine", "unsupported"]
    prefix_key: str
    warmed: bool = False
    prefix_tokens: int | None = None
    tier_hits: dict[str, int] = field(default_factory=dict)
    models: dict[str, Warmed] = field(default_factory=dict)
    reason: str | None = None


def prefix_key(messages: list[dict[str, Any]]) -> str:
    """A short stable name of a shared prefix: the hash of its messages (the engine's block hashes add the model)."""
    return hashlib.blake2b(json.dumps(messages, sort_keys=True).encode(), digest_size=12).hexdigest()


def warm_models(ctx: StageContext) -> list[str]:
    """The models later stages call about a record: the oracle, then the draft model if it is another."""
    return list(dict.fromkeys([ctx.settings.oracle_model, ctx.settings.drafter_model]))


async def warm(ctx: StageContext, messages: list[dict[str, Any]], model: str) -> Warmed | None:
    """Prefill `messages` on `model` with a one-token chat request; None if the server sent no cache report."""
    completion = await ctx.chat(messages, model=model, max_tokens=1, temperature=0.0,
                                override=MimoRequest(cache=CacheRequest(True)))
    cache = (completion.engine or {}).get("cache")
    if not isinstance(cache, dict):
        return None
    hits = {tier: int(cache.get(f"{tier}_hit_tokens", 0)) for tier in TIERS}
    return Warmed(completion.usage.prompt_tokens, hits, round(completion.latency_s, 6))


async def plan_record(record: TaskRecord, ctx: StageContext) -> None:
    """Warm the record's shared prefix in the engine and write its `kv` section."""
    messages = shared_prefix(record)
    section = KVSection(enabled=True, backend="unsupported", prefix_key=prefix_key(messages))
    if not ctx.settings.send_extensions:
        section.reason = REMOTE_REASON
    else:
        models = warm_models(ctx)
        results = await asyncio.gather(*(warm(ctx, messages, model) for model in models))
        warmed = [r for r in results if r is not None]
        if len(warmed) < len(results):
            section.reason = NO_REPORT_REASON
        else:
            section.backend, section.warmed, section.models = "engine", True, dict(zip(models, warmed))
            section.prefix_tokens, section.tier_hits = warmed[0].prefix_tokens, warmed[0].tier_hits
    record.kv = section.to_dict()


def baseline_record(record: TaskRecord, ctx: StageContext) -> None:
    """The component is disabled: no warming, and the section tells later stages to leave the cache off."""
    backend = "engine" if ctx.settings.embedded else "unsupported"
    record.kv = KVSection(enabled=False, backend=backend, prefix_key=prefix_key(shared_prefix(record))).to_dict()


def run_plan(**kwargs: Any) -> int:
    """The `plan` stage over a JSONL stream (keyword arguments: those of `mimo_core.stage.run_stage`)."""
    return run_stage(STAGE, plan_record, component=STAGE, baseline=baseline_record, **kwargs)
