"""`tiered-kv-cache plan`: the pipeline stage that warms a record's shared prefix in the engine and writes `kv`.

Every later call about a record starts with the same messages (`mimo_core.prompts.shared_prefix`: system prompt and
task). Warming sends them once, before the agents and the reasoner fan out, as a chat request for one token: the
engine prefills the prefix (the one token comes from that prefill's last logits, so nothing is decoded) and keeps its
blocks, in whichever tier they end up; every later call finds them instead of prefilling them again. Warming once
first matters most when many calls start together: each would otherwise prefill the same prefix at the same time.

The section's `enabled` is the cache part of the record's plan: every later call of the record runs with prefix
reuse on or off accordingly (`mimo_core.plan`). A disabled component does the baseline: no warming, `kv.enabled:
false`, so every later call prefills from scratch.

Against a remote server the engine's tiers do not exist, but a server with automatic prefix caching (vLLM, SGLang,
llama.cpp's server) keeps what it computed: the same one-token request warms the prefix there, and the section
records the cached tokens the server reports for it, or that it reports none. A remote server's cache cannot be
switched off per request, so a disabled component there says so.
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
SERVER_REASON = ("a remote server: the prefix was warmed in its own prefix cache, which serves the record's later "
                 "calls where it has one; the engine's tiers do not exist there")
NO_CACHED_COUNT = "the server reports no cached tokens (usage.prompt_tokens_details): whether it reuses is unknown"
NO_SWITCH = "a remote server's prefix cache cannot be switched off per request: later calls may still reuse it"


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
    backend: Literal["engine", "server"]
    prefix_key: str
    warmed: bool = False
    prefix_tokens: int | None = None
    tier_hits: dict[str, int] = field(default_factory=dict)
    models: dict[str, Warmed] = field(default_factory=dict)
    cached_tokens: int | None = None  # what the server reported cached for the warm request (None: not reported)
    reason: str | None = None


def prefix_key(messages: list[dict[str, Any]]) -> str:
    """A short stable name of a shared prefix: the hash of its messages (the engine's block hashes add the model)."""
    return hashlib.blake2b(json.dumps(messages, sort_keys=True).encode(), digest_size=12).hexdigest()


def warm_models(ctx: StageContext) -> list[str]:
    """The models later stages call about a record: the oracle, then the draft model if it is another."""
    return list(dict.fromkeys([ctx.settings.oracle_model, ctx.settings.drafter_model]))


async def warm(ctx: StageContext, messages: list[dict[str, Any]], model: str) -> tuple[Warmed, int | None]:
    """Prefill `messages` on `model` with a one-token chat request (deliberately with reuse on, whatever the plan
    holds: warming is what this stage decides); the engine's tier hits, and the cached tokens the server reported."""
    completion = await ctx.chat(messages, model=model, max_tokens=1, temperature=0.0,
                                override=MimoRequest(cache=CacheRequest(True)))
    cache = (completion.engine or {}).get("cache")
    hits = {tier: int(cache.get(f"{tier}_hit_tokens", 0)) for tier in TIERS} if isinstance(cache, dict) else {}
    return Warmed(completion.usage.prompt_tokens, hits, round(completion.latency_s, 6)), completion.usage.cached_tokens


async def plan_record(record: TaskRecord, ctx: StageContext) -> None:
    """Warm the record's shared prefix on every model later calls use (the engine's tiers, or a remote server's own
    prefix cache) and write its `kv` section."""
    messages = shared_prefix(record)
    models = warm_models(ctx)
    results = await asyncio.gather(*(warm(ctx, messages, model) for model in models))
    engine = ctx.settings.send_extensions
    section = KVSection(enabled=True, backend="engine" if engine else "server", prefix_key=prefix_key(messages),
                        warmed=True, models={m: w for m, (w, _) in zip(models, results)},
                        prefix_tokens=results[0][0].prefix_tokens, tier_hits=results[0][0].tier_hits,
                        cached_tokens=results[0][1])
    if not engine:
        section.reason = SERVER_REASON if section.cached_tokens is not None else f"{SERVER_REASON}; {NO_CACHED_COUNT}"
    record.kv = section.to_dict()


def baseline_record(record: TaskRecord, ctx: StageContext) -> None:
    """The component is disabled: no warming, and the plan's cache part off for the record's later calls."""
    engine = ctx.settings.send_extensions
    record.kv = KVSection(enabled=False, backend="engine" if engine else "server",
                          prefix_key=prefix_key(shared_prefix(record)), reason=None if engine else NO_SWITCH).to_dict()


def run_plan(**kwargs: Any) -> int:
    """The `plan` stage over a JSONL stream (keyword arguments: those of `mimo_core.stage.run_stage`)."""
    return run_stage(STAGE, plan_record, component=STAGE, baseline=baseline_record, **kwargs)
