"""Block speculative decoding: a drafter proposes up to k tokens of a sequence, the target checks them in the same
batched step in which it decodes every other sequence, and the tokens it rejects are rolled back.

A drafted block is just more tokens of the sequence for that step (the step contract needs nothing new): the target
computes the pending token and the k drafted ones, returning k + 1 rows of logits. `verify` reads them: a greedy
request keeps the longest prefix of the block that equals the target's argmax, then the target's own next token; a
sampled request applies the rejection rule of Leviathan et al. (2023) (accept drafted token x with probability
min(1, p(x) / q(x)); at the first rejection draw from max(0, p - q), normalised; if all pass, one more draw from p),
so its tokens are distributed exactly as the target's. The scheduler then truncates the sequence to what was kept.

Drafters (`mimo.speculation.method`):
- `ngram`: prompt lookup. The sequence's last 4, 3 or 2 tokens are looked up earlier in its own tokens and the
  tokens that followed the latest match are proposed. Free, and right where the output copies its input.
- `suffix`: the sequence's longest suffix (2 to 32 tokens) is matched against the engine's recent sequences (prompts
  and outputs, 64k tokens) and its own; the continuation is grown token by token, each the most frequent next token
  among the matches still agreeing, while the path's estimated probability stays above 0.1: a suffix tree walk with
  frequency counts, as SuffixDecoding does it, without building the tree. Repeated agent calls on one record are
  what it feeds on.
- `draft-model`: a smaller model with the target's tokenizer, autoregressively, on its own engine core.
- `self-mxfp4`: the target's own MXFP4 weights draft on copy-on-write forks of its sequences, the weights it
  serves verify: MiMo's two ideas, FP4 and speculation, in one.

How many tokens to draft (`Speculator.lengths`) follows from two measurements: each sequence's recent acceptance
and what a step costs against the tokens it computes (`StepCost`, from the steps the engine really runs), plus what
each drafter costs per token. Drafted tokens are ranked by their expected yield (the acceptance to the power of
their place in the block) and the step takes the first so many that give the most expected tokens per second. At
batch 1 a decode step reads every weight for one token, so drafted rows are cheap and blocks are long; once the
batch is compute-bound they are not, and speculation turns itself off.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Callable, Protocol

import numpy as np
from tiered_kv_cache import NoFreeBlocks

from mimo_engine.runtime import EngineCore, PolicyNotServed, PrecisionPlan, Work
from mimo_engine.sampling import SamplingParams, draw, probabilities
from mimo_engine.step import WeightPlan

NGRAM_SIZES = (4, 3, 2)  # longest first: a longer match predicts better
SUFFIX_MATCH = (2, 32)  # shortest and longest suffix matched
SUFFIX_CORPUS_TOKENS = 1 << 16  # the engine's recent sequences kept for the suffix drafter
SUFFIX_MIN_PROBABILITY = 0.1  # stop growing a suffix draft once its path is less likely than this
ACCEPTANCE_DECAY = 0.8  # per step: a sequence's acceptance forgets its older passes, and drifts back to 1/2 while
# it is turned down, so that it tries again once the text may have changed (a lookup that finds nothing is no news)
COST_WINDOW = 5  # step times kept per token count, drafting times per drafter
UNMEASURED_TOKEN_COST = 0.1  # a step's extra cost per token, as a fraction of its cost, until measured: cheap, so
# that a new engine tries drafting and measures what it really costs


@dataclass(frozen=True)
class DraftAsk:
    """What a drafter is asked for one sequence: its tokens (the last one not yet computed by the target), at most
    `k` tokens to propose, and how its request samples (a model drafter samples as the target would)."""

    seq_id: Hashable
    token_ids: Sequence[int]
    k: int
    params: SamplingParams
    rng: np.random.Generator


@dataclass(frozen=True)
class Draft:
    """A proposed block: its tokens and, for a drafter that samples, the distribution each was drawn from."""

    tokens: tuple[int, ...]
    probs: np.ndarray | None = None  # [len(tokens), V]; None: each token proposed with certainty (a lookup)


class Drafter(Protocol):
    """Proposes blocks for the sequences that ask, and hears when a sequence ends."""

    def propose(self, asks: list[DraftAsk]) -> dict[Hashable, Draft]: ...

    def release(self, seq_id: Hashable) -> None: ...


def verify(draft: Draft, logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> tuple[list[int], int]:
    """The tokens the target emits for a drafted block, and how many drafted tokens it accepted. `logits`
    [len(draft.tokens) + 1, V]: row i is the target's next-token logits after the block's first i tokens."""
    if params.temperature == 0.0:
        for i, token in enumerate(draft.tokens):
            best = int(np.argmax(logits[i]))
            if best != token:
                return [*draft.tokens[:i], best], i
        return [*draft.tokens, int(np.argmax(logits[-1]))], len(draft.tokens)
    for i, token in enumerate(draft.tokens):
        p = probabilities(logits[i], params)  # [V]
        q_token = 1.0 if draft.probs is None else float(draft.probs[i, token])
        if rng.random() * q_token < p[token]:  # accepted with probability min(1, p / q)
            continue
        if draft.probs is None:
            residual = p.copy()  # max(0, p - one_hot(token))
            residual[token] = 0.0
        else:
            residual = np.maximum(p - draft.probs[i], 0.0)  # [V]
        return [*draft.tokens[:i], draw(residual if residual.sum() > 0 else p, rng)], i
    return [*draft.tokens, draw(probabilities(logits[-1], params), rng)], len(draft.tokens)


def matches(corpus: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """Start positions i, in increasing order, where corpus[i : i + len(pattern)] equals `pattern` and at least one
    token follows."""
    m = len(pattern)
    starts = np.flatnonzero(corpus[: len(corpus) - m] == pattern[0])  # [matches]
    for j in range(1, m):
        starts = starts[corpus[starts + j] == pattern[j]]
    return starts


class NgramDrafter:
    """Prompt lookup: continue the sequence as it continued after the latest earlier occurrence of its last n
    tokens (n = 4, 3, 2, the longest that occurs)."""

    def propose(self, asks: list[DraftAsk]) -> dict[Hashable, Draft]:
        """A block per sequence, possibly empty."""
        return {a.seq_id: self.propose_one(np.asarray(a.token_ids), a.k) for a in asks}

    @staticmethod
    def propose_one(tokens: np.ndarray, k: int) -> Draft:
        """At most k tokens that followed the latest earlier occurrence of the sequence's last n tokens."""
        for n in NGRAM_SIZES:
            if len(tokens) <= n:
                continue
            starts = matches(tokens, tokens[-n:])
            if len(starts):
                follow = starts[-1] + n
                return Draft(tuple(int(t) for t in tokens[follow : follow + k]))
        return Draft(())

    def release(self, seq_id: Hashable) -> None:
        """Nothing is kept per sequence."""


class SuffixCorpus:
    """The engine's recent sequences (prompt and output), oldest dropped first, as one array with -1 between them."""

    def __init__(self, max_tokens: int = SUFFIX_CORPUS_TOKENS) -> None:
        self.max_tokens = max_tokens
        self._parts: deque[np.ndarray] = deque()
        self._size = 0
        self._array: np.ndarray | None = None

    def add(self, token_ids: Sequence[int]) -> None:
        """Remember a finished sequence."""
        part = np.asarray([*token_ids[-self.max_tokens :], -1], dtype=np.int64)
        self._parts.append(part)
        self._size += len(part)
        while self._size > self.max_tokens:
            self._size -= len(self._parts.popleft())
        self._array = None

    def clear(self) -> None:
        """Forget every sequence (a benchmark's fresh start)."""
        self._parts.clear()
        self._size = 0
        self._array = None

    def array(self) -> np.ndarray:
        """Every remembered sequence, concatenated, each followed by -1."""
        if self._array is None:
            self._array = np.concatenate(self._parts) if self._parts else np.zeros(0, dtype=np.int64)
        return self._array


class SuffixDrafter:
    """Matches the sequence's longest suffix in the engine's recent sequences and its own tokens, then follows the
    most frequent continuation of the matches, token by token, while the path stays likely."""

    def __init__(self, corpus: SuffixCorpus) -> None:
        self.corpus = corpus

    def propose(self, asks: list[DraftAsk]) -> dict[Hashable, Draft]:
        """A block per sequence, possibly empty."""
        return {a.seq_id: self.propose_one(np.asarray(a.token_ids, dtype=np.int64), a.k) for a in asks}

    def propose_one(self, tokens: np.ndarray, k: int) -> Draft:
        """At most k tokens continuing the longest suffix of `tokens` found in the corpus or earlier in `tokens`."""
        shortest, longest = SUFFIX_MATCH
        if len(tokens) <= shortest:
            return Draft(())
        corpus = np.concatenate([self.corpus.array(), tokens])  # [C]
        starts = matches(corpus, tokens[-shortest:])
        m = shortest
        while len(starts) and m < min(longest, len(tokens)):  # lengthen the match while it still occurs
            before = starts[starts > 0] - 1
            longer = before[corpus[before] == tokens[-m - 1]]
            if not len(longer):
                break
            starts, m = longer, m + 1
        follow, out, probability = starts + m, [], 1.0  # where each match's continuation is
        while len(out) < k and len(follow):
            following = corpus[follow]  # [matches]
            values, counts = np.unique(following, return_counts=True)
            best = int(np.argmax(np.where(values >= 0, counts, 0)))
            probability *= counts[best] / len(following)
            if values[best] < 0 or probability < SUFFIX_MIN_PROBABILITY:
                break
            out.append(int(values[best]))
            follow = follow[following == values[best]] + 1
            follow = follow[follow < len(corpus)]
        return Draft(tuple(out))

    def release(self, seq_id: Hashable) -> None:
        """Nothing is kept per sequence (finished sequences reach the corpus through the speculator)."""


class ModelDrafter:
    """Drafts with a model, one token per pass, each pass batched over the sequences asking. With `shared`, the
    model is the target's and each round drafts on copy-on-write forks of the target's sequences under `plan`
    (self-mxfp4); otherwise it has its own core, where each sequence is kept in step with the target's tokens."""

    def __init__(self, core: EngineCore, plan: WeightPlan | None = None, shared: bool = False) -> None:
        self.core = core
        self.plan = plan
        self.shared = shared

    def propose(self, asks: list[DraftAsk]) -> dict[Hashable, Draft]:
        """A block of a.k tokens per sequence (none for one the pool has no room for)."""
        ids: dict[Hashable, Hashable] = {}
        try:
            for a in asks:
                draft_id = ("draft", a.seq_id)
                try:
                    self._start(draft_id, a)
                except NoFreeBlocks:
                    continue
                ids[a.seq_id] = draft_id
            return self._run([a for a in asks if a.seq_id in ids], ids)
        except NoFreeBlocks:  # no room for the drafted tokens' KV: no drafts this step
            return {}
        finally:
            if self.shared:
                for draft_id in ids.values():
                    self.core.free(draft_id)

    def _start(self, draft_id: Hashable, ask: DraftAsk) -> None:
        """Make the draft sequence hold exactly the target's tokens, its KV computed as far as they agree."""
        if self.shared:
            self.core.fork(ask.seq_id, draft_id)
            return
        seq = self.core.sequences.get(draft_id)
        if seq is None:
            self.core.add(draft_id, ask.token_ids)
            return
        n = min(len(seq.token_ids), len(ask.token_ids))
        differ = np.flatnonzero(np.asarray(seq.token_ids[:n]) != np.asarray(ask.token_ids[:n]))
        same = int(differ[0]) if len(differ) else n
        self.core.truncate(draft_id, same)
        self.core.append(draft_id, ask.token_ids[same:])

    def _run(self, asks: list[DraftAsk], ids: dict[Hashable, Hashable]) -> dict[Hashable, Draft]:
        tokens: dict[Hashable, list[int]] = {a.seq_id: [] for a in asks}
        probs: dict[Hashable, list[np.ndarray]] = {a.seq_id: [] for a in asks}
        active = list(asks)
        while active:
            rows = self.core.step([Work(ids[a.seq_id], self.core.pending(ids[a.seq_id]), "last", self.plan)
                                   for a in active])
            still = []
            for a, row in zip(active, rows):
                if a.params.temperature == 0.0:
                    token = int(np.argmax(row[-1]))
                else:
                    q = probabilities(row[-1], a.params)  # [V]
                    token = draw(q, a.rng)
                    probs[a.seq_id].append(q)
                tokens[a.seq_id].append(token)
                if len(tokens[a.seq_id]) < a.k:
                    self.core.append(ids[a.seq_id], [token])
                    still.append(a)
            active = still
        return {a.seq_id: Draft(tuple(tokens[a.seq_id]), np.stack(probs[a.seq_id]) if probs[a.seq_id] else None)
                for a in asks}

    def release(self, seq_id: Hashable) -> None:
        """Free the sequence's draft copy."""
        self.core.free(("draft", seq_id))


class MedianCost:
    """A cost measured again and again: the median of its latest few measurements. The first one does not count:
    the first call of a kernel in a process also loads or compiles it (measured: 0.59 s for self-mxfp4's first
    3-token draft on smollm2-135m, 0.05 s for the next)."""

    def __init__(self) -> None:
        self._recent: deque[float] = deque(maxlen=COST_WINDOW)
        self._first = True
        self.value = 0.0

    @property
    def measured(self) -> bool:
        """Whether a measurement that counts has been taken."""
        return bool(self._recent)

    def observe(self, seconds: float) -> None:
        """Fold in one measurement."""
        if self._first:
            self._first = False
            return
        self._recent.append(seconds)
        self.value = float(np.median(self._recent))


class StepCost:
    """Seconds of a decoding step (no prompt chunk in it) against the tokens it computes, measured on the steps the
    engine runs: a `MedianCost` per token count. A step of one token is read as measured (it has a kernel of its
    own); larger steps from a straight line fitted through the larger counts measured, so that one noisy count does
    not make drafting look cheaper or dearer than its neighbours."""

    def __init__(self) -> None:
        self._costs: dict[int, MedianCost] = {}
        self.seconds: dict[int, float] = {}
        self._line: tuple[float, float] | None = None  # (slope, intercept), fitted once per new measurement

    def observe(self, tokens: int, seconds: float) -> None:
        """Fold in one step's time."""
        cost = self._costs.setdefault(tokens, MedianCost())
        cost.observe(seconds)
        if cost.measured:
            self.seconds[tokens] = cost.value
            self._line = None

    def __call__(self, tokens: int) -> float:
        """The expected seconds of a step of `tokens` tokens (in units of an unmeasured step if nothing is known)."""
        if tokens == 1 and 1 in self.seconds:
            return self.seconds[1]
        if self._line is None:
            self._line = self._fit()
        slope, intercept = self._line
        return intercept + slope * tokens

    def _fit(self) -> tuple[float, float]:
        """(slope, intercept) of the line the step costs of more than one token are read from."""
        points = sorted(n for n in self.seconds if n > 1)
        if len(points) < 2:  # too few larger steps for a line of their own: the one-token step anchors it
            points = sorted(self.seconds)
        if len(points) >= 2:
            slope, intercept = np.polyfit(points, [self.seconds[n] for n in points], 1)
            if slope <= 0.0:
                return 0.0, float(np.mean([self.seconds[n] for n in points]))
            return float(slope), float(intercept)
        # one count measured (or none, in units of an unmeasured step): assume drafted tokens are cheap until a
        # larger step says otherwise
        base, seconds = (points[0], self.seconds[points[0]]) if points else (1, 1.0)
        slope = seconds * UNMEASURED_TOKEN_COST
        return slope, seconds - slope * base


@dataclass
class SequenceSpeculation:
    """A speculating sequence's drafter, block limit, and decayed counts of its drafted tokens accepted and of its
    rejections (each pass ends at one, unless the whole block was accepted)."""

    method: str
    block: int
    adaptive: bool = True  # False: always draft `block` tokens
    accepted: float = 0.0
    rejected: float = 0.0

    @property
    def acceptance(self) -> float:
        """The chance that its next drafted token is accepted (Laplace-smoothed: 1/2 before any pass)."""
        return (self.accepted + 1) / (self.accepted + self.rejected + 2)

    def observe(self, drafted: int, accepted: int) -> None:
        """Fold in one step: a verification pass, or (drafted = 0) a step without one."""
        self.accepted = ACCEPTANCE_DECAY * self.accepted + accepted
        self.rejected = ACCEPTANCE_DECAY * self.rejected + (accepted < drafted)


class Speculator:
    """A worker's drafters, its step-cost measurements, and the choice of how much each sequence drafts."""

    def __init__(self, drafters: dict[str, Drafter], corpus: SuffixCorpus) -> None:
        self.drafters = drafters
        self.corpus = corpus
        self.step_cost = StepCost()
        self.draft_cost = {method: MedianCost() for method in drafters}  # seconds per drafted token

    def lengths(self, items: list[tuple[SequenceSpeculation, int]], decoding: int) -> list[int]:
        """How many tokens each (sequence, most it may draft) drafts in a step that decodes `decoding` sequences:
        drafted tokens are taken likeliest first, and the step keeps the first so many of them that give the most
        expected tokens per second of step and drafting time. Not the greedy "while the next one pays": the first
        drafted row costs the most (measured on smollm2-135m: a step of 1 token 16.5 ms, of 2 tokens 25.4 ms, of 9
        43.6 ms: one row takes the fused kernel, more rows the batched one). A sequence that is not adaptive drafts
        all it may."""
        lengths = [0 if s.adaptive else max(most, 0) for s, most in items]
        tokens = decoding + sum(lengths)
        expected = decoding + sum(sum(s.acceptance ** j for j in range(1, k + 1)) for (s, _), k in zip(items, lengths))
        seconds = self.step_cost(tokens) + sum(self.draft_cost[s.method].value * k for (s, _), k in zip(items, lengths))
        heap = [(-s.acceptance, i) for i, (s, most) in enumerate(items) if most > 0 and s.adaptive]
        heapq.heapify(heap)
        taken, drafted, best, best_rate = [], [0] * len(items), 0, expected / seconds
        while heap:
            negative, i = heapq.heappop(heap)
            gain, (spec, most) = -negative, items[i]
            seconds += self.step_cost(tokens + 1) - self.step_cost(tokens) + self.draft_cost[spec.method].value
            tokens, expected = tokens + 1, expected + gain
            taken.append(i)
            drafted[i] += 1
            if expected / seconds > best_rate:
                best, best_rate = len(taken), expected / seconds
            if drafted[i] < most and self.draft_cost[spec.method].measured:  # a drafter yet unmeasured: one token
                heapq.heappush(heap, (-gain * spec.acceptance, i))
        for i in taken[:best]:
            lengths[i] += 1
        return lengths

    def draft(self, asks: list[tuple[SequenceSpeculation, DraftAsk]], decoding: int
              ) -> tuple[dict[Hashable, Draft], dict[str, float]]:
        """Blocks for the sequences asking, sized by `lengths`; and the seconds each drafter took."""
        lengths = self.lengths([(spec, ask.k) for spec, ask in asks], decoding)
        by_method: dict[str, list[DraftAsk]] = {}
        for (spec, ask), k in zip(asks, lengths):
            if not k:
                spec.observe(0, 0)
            else:
                by_method.setdefault(spec.method, []).append(replace(ask, k=k))
        drafts: dict[Hashable, Draft] = {}
        seconds: dict[str, float] = {}
        for method, method_asks in by_method.items():
            started = time.perf_counter()
            proposed = self.drafters[method].propose(method_asks)
            seconds[method] = time.perf_counter() - started
            drafted = sum(len(d.tokens) for d in proposed.values())
            if drafted:
                self.draft_cost[method].observe(seconds[method] / drafted)
            drafts.update({seq_id: d for seq_id, d in proposed.items() if d.tokens})
        return drafts, seconds

    def release(self, seq_id: Hashable, finished: Sequence[int] | None) -> None:
        """A sequence ended: drafters drop what they hold for it; a finished one's tokens join the suffix corpus."""
        for drafter in self.drafters.values():
            drafter.release(seq_id)
        if finished is not None:
            self.corpus.add(finished)


# ---------------------------------------------------------------- the drafters, by method name


class DrafterUnavailable(ValueError):
    """A drafter this model cannot serve as it was started; the message says what would make it servable."""


@dataclass(frozen=True)
class DrafterContext:
    """What a drafter is built from: the target's core, the draft model's core (None: no draft model) and the
    worker's suffix corpus."""

    target: EngineCore
    draft: EngineCore | None
    corpus: SuffixCorpus


def _draft_model(context: DrafterContext) -> Drafter:
    if context.draft is None:
        raise DrafterUnavailable(f"speculation method 'draft-model' needs a draft model: start the server with "
                                 f"--draft-model NAME (a smaller model with {context.target.model.name}'s tokenizer)")
    return ModelDrafter(context.draft)


def _self_mxfp4(context: DrafterContext) -> Drafter:
    model = context.target.model
    try:
        plan = PrecisionPlan.of(model, "mxfp4").prompt
    except PolicyNotServed:
        raise DrafterUnavailable(f"speculation method 'self-mxfp4' needs {model.name}'s MXFP4 weights: include "
                                 f"mxfp4 in MIMO_PRECISION_POLICIES") from None
    return ModelDrafter(context.target, plan, shared=True)


# One entry per drafter named in `mimo_core.extensions.DRAFTERS` (a test checks that each has one): the request
# contract, the CLI's help and choices and the server's validation all read the names there.
DRAFTER_FACTORIES: dict[str, Callable[[DrafterContext], Drafter]] = {
    "ngram": lambda context: NgramDrafter(),
    "suffix": lambda context: SuffixDrafter(context.corpus),
    "draft-model": _draft_model,
    "self-mxfp4": _self_mxfp4,
}


def build_speculator(context: DrafterContext) -> tuple[Speculator, dict[str, str]]:
    """A worker's speculator with every drafter of the registry it can serve, and why each other one is not served."""
    drafters, unserved = {}, {}
    for method, build in DRAFTER_FACTORIES.items():
        try:
            drafters[method] = build(context)
        except DrafterUnavailable as exc:
            unserved[method] = str(exc)
    return Speculator(drafters, context.corpus), unserved
