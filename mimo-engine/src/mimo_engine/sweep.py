"""`sweep`: quality against bits per weight read, for every policy, on a held-out text.

For each policy: perplexity of the text, the mean KL divergence of each next-token distribution from the float32
model's, the average bits per weight the kernels read, and decode tokens/s. A static policy reads the same formats
for every token, so one teacher-forced prefill computes each token under exactly the weights decode would use. The
entropy policy picks each token's formats from the entropy of the distribution before it, so its tokens run one at
a time, as decode runs them, each reading what its own routed predecessor decided. Speeds are taken interleaved
(every policy once per round, medians over rounds), because this machine's load drifts.

It lives with the engine because it loads the model and runs the engine's own forward pass and kernels
(`mimo-engine sweep`; `precision-router sweep` runs that command as a process).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from precision_router.policy import POLICIES, STATIC, entropy_nats

from mimo_core.contract import Contract
from mimo_engine.runtime import BLOCK_SIZE, LoadedModel
from mimo_engine.sampling import log_softmax
from mimo_engine.step import ScheduledSequence, StepBatch, WeightPlan

STATIC_POLICIES = (*STATIC, "experts-mxfp4", "native")
ENTROPY_TARGETS = (5.0, 5.5, 6.0, 7.0)
SPEED_TOKENS = 32  # decode steps timed per policy and round
SPEED_CONTEXT = 64  # tokens in the KV cache before the timed steps


@dataclass
class SweepPoint(Contract):
    """One policy's quality, bits read and speed."""

    policy: str
    kind: str  # "static" or "entropy"
    bits_per_weight: float  # averaged over the text's tokens, from the bytes the kernels read
    perplexity: float
    perplexity_ratio: float  # to the float32 model's
    mean_kl: float  # nats, KL(float32 || policy) per token, averaged
    decode_tokens_per_s: float | None  # median over rounds, batch 1
    low_share: float | None = None  # entropy policies: the share of tokens that read MXFP4
    on_pareto_front: bool = False  # static policies: no other static policy is better at no more bits
    below_static_front: bool | None = None  # entropy policies: perplexity at or under the static front there


@dataclass
class Sweep(Contract):
    """A sweep of one model over one text."""

    SCHEMA = "mimo.precision-sweep/1"

    model: str
    text: str
    tokens: int
    points: list[SweepPoint]
    goals: dict[str, Any]
    environment: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0


def token_logprobs(logp: np.ndarray, ids: list[int]) -> np.ndarray:
    """The log-probability [T-1] of each of ids[1:] given the tokens before it, from log-probabilities logp ([T, V])."""
    return logp[np.arange(len(ids) - 1), ids[1:]]


def perplexity(logp: np.ndarray, ids: list[int]) -> float:
    """exp of the mean negative log-likelihood of ids[1:] given log-probabilities logp[:-1] ([T, V])."""
    return float(np.exp(-token_logprobs(logp, ids).mean()))


def mean_kl(reference: np.ndarray, logp: np.ndarray) -> float:
    """Mean over positions of KL(reference || logp), both log-probabilities [T, V]."""
    return float((np.exp(reference) * (reference - logp)).sum(axis=-1).mean())


def pareto_front(points: list[SweepPoint]) -> list[SweepPoint]:
    """The points no other point beats (fewer or equal bits and lower or equal perplexity, one strictly), by bits."""
    def beaten(p: SweepPoint) -> bool:
        return any(q.bits_per_weight <= p.bits_per_weight and q.perplexity <= p.perplexity
                   and (q.bits_per_weight, q.perplexity) != (p.bits_per_weight, p.perplexity) for q in points)
    return sorted((p for p in points if not beaten(p)), key=lambda p: p.bits_per_weight)


def front_perplexity(front: list[SweepPoint], bits: float) -> float | None:
    """The static front's perplexity at `bits`, linear between its points; None outside its range of bits."""
    xs = [p.bits_per_weight for p in front]
    if not front or not xs[0] <= bits <= xs[-1]:
        return None
    return float(np.interp(bits, xs, [p.perplexity for p in front]))


class _Runner:
    """The model and the text, with the forward passes a sweep needs."""

    def __init__(self, model: LoadedModel, ids: list[int]):
        self.model, self.ids = model, ids
        self.blocks = -(-len(ids) // BLOCK_SIZE)
        self.weights = sum(model.group_weights().values())

    def _step(self, token_ids: tuple[int, ...], start: int, logits_for: tuple[int, ...], plan: WeightPlan,
              pool: Any, read: dict | None = None) -> np.ndarray:
        seq = ScheduledSequence("sweep", token_ids, start, tuple(range(self.blocks)), logits_for, plan)
        return self.model.forward(StepBatch((seq,)), pool, read)

    def prefill(self, plan: WeightPlan) -> np.ndarray:
        """Logits [T, V] of the whole text under one plan, in one pass."""
        pool = self.model.new_pool(self.blocks)
        return self._step(tuple(self.ids), 0, tuple(range(len(self.ids))), plan, pool)

    def routed(self, policy: Any, first: int = 0, count: int | None = None,
               pool: Any = None) -> tuple[np.ndarray, int, int]:
        """Tokens first..first+count one at a time, each under the plan its predecessor's entropy picks: logits
        [count, V], weight bytes the kernels read, and how many tokens read the low format."""
        pool = pool if pool is not None else self.model.new_pool(self.blocks)
        count = len(self.ids) - first if count is None else count
        out = np.empty((count, self.model.config.vocab_size), dtype=np.float32)
        read: dict = {}
        entropy, low = None, 0
        for t in range(count):
            assignment = policy.assign(entropy)
            low += assignment != policy.high
            out[t] = self._step((self.ids[first + t],), first + t, (0,), self.model.resolve(assignment), pool, read)[0]
            entropy = float(entropy_nats(out[t]))
        return out, sum(figures[0] for figures in read.values()), low

    def decode_rate(self, policy: Any) -> float:
        """Tokens/s of SPEED_TOKENS single-token steps after SPEED_CONTEXT tokens of context (not timed)."""
        pool = self.model.new_pool(self.blocks)
        self._step(tuple(self.ids[:SPEED_CONTEXT]), 0, (SPEED_CONTEXT - 1,), self.model.resolve(policy.high), pool)
        began = time.perf_counter()
        self.routed(policy, SPEED_CONTEXT, SPEED_TOKENS, pool)
        return SPEED_TOKENS / (time.perf_counter() - began)


def policy_names(targets: tuple[float, ...] = ENTROPY_TARGETS) -> list[str]:
    """The policies a sweep measures: every static one, and the entropy policy at each target."""
    return [*STATIC_POLICIES, *(f"entropy@{t:g}" for t in targets)]


def sweep(model_name: str, text: str, text_name: str, rounds: int = 3, targets: tuple[float, ...] = ENTROPY_TARGETS,
          progress: Callable[[str], None] = lambda _: None, cache_dir: Any = None, threads: int | None = None) -> Sweep:
    """Measure every policy of `policy_names(targets)` on `text` with model `model_name` (see the module)."""
    progress(f"loading {model_name} in every format")
    model = LoadedModel.load(model_name, cache_dir, policies=[p for p in POLICIES], threads=threads)
    ids = model.tokenizer.encode(text)[: model.config.context_length]
    if len(ids) < SPEED_CONTEXT + SPEED_TOKENS:
        raise ValueError(f"the text has {len(ids)} tokens; a sweep needs at least {SPEED_CONTEXT + SPEED_TOKENS}")
    runner = _Runner(model, ids)
    policies = {name: model.policy(name) for name in policy_names(targets)}
    progress("float32 reference")
    reference = log_softmax(runner.prefill(model.plan(policies["f32"])))
    f32_ppl = perplexity(reference, ids)
    points = []
    for name, p in policies.items():
        progress(f"quality under {name}")
        if p.thresholds:
            logits, nbytes, low = runner.routed(p)
            bits, share = 8 * nbytes / (runner.weights * len(ids)), low / len(ids)
        else:
            logits, share = runner.prefill(model.plan(p)), None
            bits = 8 * model.plan_reads(model.plan(p))[1] / runner.weights
        logp = log_softmax(logits)
        points.append(SweepPoint(name, "entropy" if p.thresholds else "static", round(bits, 4),
                                 round(perplexity(logp, ids), 4), round(perplexity(logp, ids) / f32_ppl, 5),
                                 round(mean_kl(reference, logp), 6), None, share))
    rates: dict[str, list[float]] = {name: [] for name in policies}
    for r in range(rounds):
        for name, p in policies.items():
            progress(f"decode speed, round {r + 1} of {rounds}: {name}")
            rates[name].append(runner.decode_rate(p))
    for point in points:
        point.decode_tokens_per_s = round(statistics.median(rates[point.policy]), 2)
    return Sweep(model_name, text_name, len(ids), points, judge(points), environment(), time.time())


def judge(points: list[SweepPoint]) -> dict[str, Any]:
    """Mark the static Pareto front and where each entropy point lies against it; the issue's goal (a)."""
    static = [p for p in points if p.kind == "static"]
    front = pareto_front(static)
    for p in front:
        p.on_pareto_front = True
    entropy = [p for p in points if p.kind == "entropy"]
    for p in entropy:
        at = front_perplexity(front, p.bits_per_weight)
        p.below_static_front = None if at is None else p.perplexity <= at * 1.001
    close = [p.policy for p in entropy if p.bits_per_weight <= 6.0 and p.perplexity_ratio <= 1.01]
    return {
        "entropy_on_or_below_static_front": all(p.below_static_front is not False for p in entropy),
        "entropy_within_1pct_of_f32_at_6_bits_or_fewer": bool(close),
        "which": close,
    }


def environment() -> dict[str, Any]:
    """The machine and its load, which every speed here depends on."""
    return {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def plot(result: Sweep, path: Any) -> None:
    """Perplexity ratio and KL against bits per weight read: static policies with their Pareto front, and the
    entropy policy's targets."""
    import matplotlib  # noqa: PLC0415 - only for the figure

    matplotlib.use("Agg")  # files only: no display
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
    static = [p for p in result.points if p.kind == "static"]
    entropy = sorted((p for p in result.points if p.kind == "entropy"), key=lambda p: p.bits_per_weight)
    front = [p for p in sorted(static, key=lambda p: p.bits_per_weight) if p.on_pareto_front]
    for ax, key, label in ((axes[0], "perplexity_ratio", "perplexity / float32's"),
                           (axes[1], "mean_kl", "mean KL to float32 (nats)")):
        ax.plot([p.bits_per_weight for p in front], [getattr(p, key) for p in front], "-", color="tab:blue",
                label="static Pareto front")
        ax.scatter([p.bits_per_weight for p in static], [getattr(p, key) for p in static], color="tab:blue",
                   label="static policies")
        labels: dict[tuple[float, float], list[str]] = {}
        for p in static:  # policies that read the same forms (native and q8_0 here) share one label
            labels.setdefault((p.bits_per_weight, getattr(p, key)), []).append(p.policy)
        for xy, names in labels.items():
            ax.annotate(" = ".join(names), xy, fontsize=8, xytext=(4, 4), textcoords="offset points")
        ax.plot([p.bits_per_weight for p in entropy], [getattr(p, key) for p in entropy], "s--", color="tab:red",
                label="entropy@B")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("bits per weight read")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(f"{result.model}: {result.text} ({result.tokens} tokens)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
