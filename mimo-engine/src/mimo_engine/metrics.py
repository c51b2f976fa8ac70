"""Server-wide figures and their Prometheus text: each figure is declared once and /metrics derives from it.

Per-request figures are declared on the `mimo` report (`mimo_core.extensions.MimoReport`, with `figure(...)`), and
/metrics counts work as it is done, as vLLM does: an admitted request's report is live (the scheduler adds its prompt
tokens once its prompt is in, each generated token as it is sampled, each prefill chunk as it is computed), /metrics
reads its counters through, and when it ends (finished, failed, or cancelled because its client hung up) they are
folded into the server's totals for good. So a request's `mimo` report and /metrics never disagree, and the work of
a request nobody waited for still shows. Histograms observe finished requests only. What only exists server-wide
(the queue, the KV blocks, latency between tokens, tokens per step) is declared below, once; the block traffic
between KV tiers (hits and misses per tier, promotions, demotions, drops, bytes per link) is declared once in
`tiered_kv_cache.CacheStats` and exported here as counters labelled by tier or link.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Callable, Protocol

from tiered_kv_cache import CacheStats, KVCacheManager

from mimo_core.extensions import CacheReport, MimoReport, PrecisionReport, SpeculationReport, figures

RATE_WINDOW_S = 10.0  # tokens/s is measured over this trailing window
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def gauge(help: str) -> float:
    """A field of `WorkerGauges`: its help text."""
    return field(default=0.0, metadata={"help": help})  # type: ignore[return-value]


@dataclass
class WorkerGauges:
    """A model worker's state at one moment."""

    waiting: float = gauge("Requests waiting to start.")
    running: float = gauge("Sequences decoding.")
    prefilling: float = gauge("Requests whose prompt is being prefilled.")
    kv_blocks_used: float = gauge("KV cache blocks held by sequences.")
    kv_blocks_free: float = gauge("KV cache blocks free (cached ones among them stay reusable until evicted).")
    kv_blocks_cached: float = gauge("KV cache blocks holding a reusable prompt prefix.")
    prefix_hit_rate: float = gauge("Prompt tokens served from cached blocks / prompt tokens looked up, since start.")
    tokens_per_s: float = gauge("Tokens generated per second over the last 10 s.")


REPORT_PARTS = (("", MimoReport), ("cache_", CacheReport), ("precision_", PrecisionReport),
                ("speculation_", SpeculationReport))


def report_figures() -> list[tuple[str, str, str]]:
    """(name, help, metric kind) of every figure the `mimo` report declares; a part's are prefixed with its name."""
    return [(prefix + f.name, f.metadata["help"], f.metadata["metric"])
            for prefix, part in REPORT_PARTS for f in figures(part)]


def _report_value(report: MimoReport, name: str) -> float:
    for prefix, _ in REPORT_PARTS[1:]:
        if name.startswith(prefix):
            return getattr(getattr(report, prefix[:-1]), name.removeprefix(prefix))
    return getattr(report, name)


@dataclass
class Histogram:
    """Cumulative-bucket histogram in Prometheus' sense."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1


def _report_histograms() -> dict[str, Histogram]:
    return {name: Histogram(LATENCY_BUCKETS_S) for name, _, kind in report_figures() if kind == "histogram"}


@dataclass
class WorkerMetrics:
    """The running totals of one model's worker."""

    requests: int = 0  # accepted
    rejected: int = 0  # refused with 429
    steps: int = 0
    totals: dict[str, float] = field(default_factory=dict)  # counter figures of the reports of ended requests, summed
    live: dict[int, MimoReport] = field(default_factory=dict)  # reports of requests not yet ended, by id
    histograms: dict[str, Histogram] = field(default_factory=_report_histograms)
    inter_token_latency_s: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_S))
    step_tokens: Histogram = field(default_factory=lambda: Histogram(TOKEN_BUCKETS))
    recent: deque = field(default_factory=deque)  # (monotonic time, tokens generated)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # moving a report from live to totals

    def admitted(self, report: MimoReport) -> None:
        """Count an accepted request's report from now on, as the scheduler fills it in."""
        with self._lock:
            self.live[id(report)] = report

    def ended(self, report: MimoReport, finished: bool = False) -> None:
        """Fold an ended request's counters into the totals for good; a `finished` one (not failed, not cancelled)
        is observed by the histograms too. Harmless for a report already ended."""
        with self._lock:
            if self.live.pop(id(report), None) is None:
                return
            for name, _, kind in report_figures():
                if kind == "counter":
                    self.totals[name] = self.totals.get(name, 0) + _report_value(report, name)
                elif finished:
                    self.histograms[name].observe(_report_value(report, name))

    def counter(self, name: str) -> float:
        """A counter figure of the report (`report_figures`' name) over every request so far, ended or not."""
        with self._lock:
            return self.totals.get(name, 0) + sum(_report_value(r, name) for r in self.live.values())

    def record_tokens(self, tokens: int) -> None:
        """Count generated tokens for the trailing tokens/s window."""
        now = time.monotonic()
        self.recent.append((now, tokens))
        while self.recent and self.recent[0][0] < now - RATE_WINDOW_S:
            self.recent.popleft()

    def tokens_per_s(self) -> float:
        """Generated tokens per second over the trailing window."""
        recent = list(self.recent)
        if not recent:
            return 0.0
        span = max(time.monotonic() - recent[0][0], 1e-3)
        return sum(tokens for _, tokens in recent) / min(span, RATE_WINDOW_S)


class Observed(Protocol):
    """What /metrics reads of a model's worker (its totals, its gauges now, its KV block manager): declared here so
    that the metrics need not import the worker that fills them."""

    metrics: WorkerMetrics

    def gauges(self) -> WorkerGauges: ...

    @property
    def kv(self) -> KVCacheManager: ...


def prometheus_text(by_model: dict[str, Observed]) -> str:
    """Every worker's figures in the Prometheus text exposition format, labelled by model."""
    workers = sorted(by_model.items())
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, dict[str, str], float]]) -> None:
        lines.extend([f"# HELP mimo_engine_{name} {help_text}", f"# TYPE mimo_engine_{name} {kind}"])
        for suffix, labels, value in samples:
            text = ",".join(f'{k}="{v}"' for k, v in labels.items())
            lines.append(f"mimo_engine_{name}{suffix}{{{text}}} {float(value):g}")

    def per_model(value: Callable[[Observed], float]) -> list[tuple[str, dict[str, str], float]]:
        return [("", {"model": model}, value(w)) for model, w in workers]

    def histogram(name: str, help_text: str, pick: Callable[[Observed], Histogram]) -> None:
        samples: list[tuple[str, dict[str, str], float]] = []
        for model, w in workers:
            h, seen = pick(w), 0
            for bound, count in zip([*h.buckets, math.inf], h.counts):
                seen += count
                samples.append(("_bucket", {"model": model, "le": f"{bound:g}".replace("inf", "+Inf")}, seen))
            samples += [("_sum", {"model": model}, h.total), ("_count", {"model": model}, h.n)]
        family(name, "histogram", help_text, samples)

    family("requests_total", "counter", "Requests accepted.", per_model(lambda w: w.metrics.requests))
    family("requests_rejected_total", "counter", "Requests refused with 429 (queue full).",
           per_model(lambda w: w.metrics.rejected))
    family("steps_total", "counter", "Engine steps run.", per_model(lambda w: w.metrics.steps))
    for name, help_text, kind in report_figures():
        if kind == "counter":
            family(f"{name}_total", "counter", help_text, per_model(lambda w, n=name: w.metrics.counter(n)))
        else:
            histogram(name, help_text, lambda w, n=name: w.metrics.histograms[n])
    histogram("inter_token_latency_s", "Seconds between consecutive tokens of a sequence.",
              lambda w: w.metrics.inter_token_latency_s)
    histogram("step_tokens", "Tokens per engine step (decode tokens plus prompt chunks).",
              lambda w: w.metrics.step_tokens)
    gauges = {model: w.gauges() for model, w in workers}
    for f in fields(WorkerGauges):
        family(f.name, "gauge", f.metadata["help"], [("", {"model": m}, getattr(g, f.name)) for m, g in gauges.items()])
    for f in fields(CacheStats):
        family(f"kv_{f.name}_total", "counter", f.metadata["help"], tier_samples(workers, f.name, f.metadata["label"]))
    family("kv_tier_blocks", "gauge", "Blocks each KV tier holds now (hbm: committed blocks).",
           [("", {"model": m, "tier": t}, n) for m, w in workers for t, n in w.kv.tier_blocks().items()])
    family("kv_tier_capacity_blocks", "gauge", "Blocks each KV tier may hold.",
           [("", {"model": m, "tier": t}, n) for m, w in workers for t, n in w.kv.tier_capacity().items()])
    return "\n".join(lines) + "\n"


def tier_samples(workers: list[tuple[str, Observed]], name: str, label: str | None) -> list:
    """Samples of one `CacheStats` figure per model, split by its label (tier or link) when it has one."""
    samples = []
    for model, w in workers:
        value = getattr(w.kv.stats, name)
        if label is None:
            samples.append(("", {"model": model}, value))
        else:
            samples += [("", {"model": model, label: key}, count) for key, count in dict(value).items()]
    return samples
