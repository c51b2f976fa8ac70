"""`tiered-kv-cache stats`: the live engine's KV tiers, read from its `/metrics` (the same figures, declared once in
`CacheStats`, that Prometheus scrapes)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

import httpx

from mimo_core.contract import Contract
from mimo_core.daemon import read_state
from mimo_core.settings import Settings
from tiered_kv_cache.tiers import CacheStats

PREFIX = "mimo_engine_"
SAMPLE = re.compile(r'^(\w+)\{([^}]*)\} (\S+)$')
LABEL = re.compile(r'(\w+)="([^"]*)"')
TIMEOUT_S = 5.0


class NoEngine(RuntimeError):
    """No engine answers where its KV figures were looked for; the message says where and what to do."""


@dataclass
class ModelCache(Contract):
    """One model's KV tiers now: occupancy, hit rate since start, and every traffic figure."""

    hit_rate: float = 0.0  # prompt tokens served from any tier / prompt tokens looked up
    tier_blocks: dict[str, int] = field(default_factory=dict)
    tier_capacity_blocks: dict[str, int] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)  # CacheStats' figures: counts, or counts by tier or link


@dataclass
class LiveStats(Contract):
    """The KV tiers of every model a live engine has loaded."""

    SCHEMA = "mimo.kv-stats/1"

    url: str
    models: dict[str, ModelCache] = field(default_factory=dict)


def parse_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every labelled sample of a Prometheus text exposition."""
    samples = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            samples.append((match[1], dict(LABEL.findall(match[2])), float(match[3])))
    return samples


def cache_stats(text: str, url: str) -> LiveStats:
    """The KV figures in a mimo-engine's /metrics text, by model."""
    declared = {f"{PREFIX}kv_{f.name}_total": f for f in fields(CacheStats)}
    stats = LiveStats(url)
    for name, labels, value in parse_samples(text):
        model = labels.get("model")
        if model is None:
            continue
        cache = stats.models.setdefault(model, ModelCache())
        if name in declared:
            label = declared[name].metadata["label"]
            if label is None:
                cache.figures[declared[name].name] = int(value)
            else:
                cache.figures.setdefault(declared[name].name, {})[labels.get(label, "")] = int(value)
        elif name == f"{PREFIX}kv_tier_blocks":
            cache.tier_blocks[labels.get("tier", "")] = int(value)
        elif name == f"{PREFIX}kv_tier_capacity_blocks":
            cache.tier_capacity_blocks[labels.get("tier", "")] = int(value)
        elif name == f"{PREFIX}prefix_hit_rate":
            cache.hit_rate = value
    return stats


def engine_url(settings: Settings, url: str | None = None) -> str:
    """The engine to ask: `url`, or the shared embedded engine of the settings' cache dir (NoEngine if none runs)."""
    if url:
        return url.rstrip("/").removesuffix("/v1")
    if not settings.embedded:
        raise NoEngine("MIMO_BASE_URL points at a remote server, whose KV cache is its own; pass --url to read a "
                       "mimo-engine server")
    state = read_state(settings)
    if state is None:
        raise NoEngine(f"no embedded engine is running for {settings.cache_dir}; any tool starts one, or pass --url")
    return f"http://127.0.0.1:{state.port}"


def live_stats(settings: Settings, url: str | None = None) -> LiveStats:
    """The KV tiers of the engine at `url` (default: the shared embedded engine) now."""
    base = engine_url(settings, url)
    try:
        response = httpx.get(f"{base}/metrics", timeout=TIMEOUT_S)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise NoEngine(f"{base}/metrics did not answer: {exc}") from None
    return cache_stats(response.text, base)
