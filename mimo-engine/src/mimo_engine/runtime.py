"""A loaded model and the engine core around it: the forward pass of a step, over KV blocks in a pool.

`LoadedModel` is the model runner: weights, config, tokenizer, and `forward(batch, pool)`. `EngineCore` is what the
scheduler and the benchmark drive: it owns the pool and the block manager (`tiered_kv_cache`), keeps each sequence's
tokens, turns "run these tokens of these sequences" into a `StepBatch`, and commits the blocks each step fills so a
later prompt that starts the same way reuses them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from precision_router import policy
from precision_router.kernels import configure_threads
from precision_router.policy import GROUPS, POLICIES, Assignment, Policy, entropy_nats
from tiered_kv_cache import KVCacheManager, KVPool, Prefix, TierConfig

from mimo_core.provenance import package_version
from mimo_core.settings import is_model_path, served_model_name
from mimo_engine.config import DEFAULT_POLICIES
from mimo_engine.gguf_model import GGUFFile, load_weights, read_config
from mimo_engine.fused import FusedBlocks
from mimo_engine.model import ModelConfig, ModelWeights, Route, Routes, block, hidden_states, logits
from mimo_engine.paged_attention import PagedAttention
from mimo_engine.pull import ensure_model
from mimo_engine.registry import MODELS
from mimo_engine.step import ScheduledSequence, StepBatch, WeightPlan
from mimo_engine.tokenizer import Tokenizer

BLOCK_SIZE = 16  # tokens per KV block
CALIBRATION_TEXT = policy.calibration_text()


def resolve_policies(names: Sequence[str] | None) -> tuple[str, ...]:
    """The precision policies a model is loaded for, from the setting's names (MIMO_PRECISION_POLICIES, resolved by
    the caller): None is DEFAULT_POLICIES, `all` every policy. The first is what a request that names none runs
    under. UnknownPolicy (a ValueError) names the policies that exist."""
    if not names:
        return DEFAULT_POLICIES
    if tuple(names) == ("all",):
        return POLICIES
    for name in names:
        policy.parse(name)
    return tuple(names)


class PolicyNotServed(ValueError):
    """A policy whose weight formats the loaded model does not hold."""


@dataclass
class LoadedModel:
    """A model's config, tokenizer and weights (held in the formats its precision policies read), ready to run."""

    name: str
    config: ModelConfig
    tokenizer: Tokenizer
    weights: ModelWeights
    fingerprint: str  # what a KV block's identity depends on besides its tokens: weights, KV dtype and layout
    natives: dict[str, Any]  # each group's native format: {"attn": [per block], "mlp": [per block], "head": fmt}
    policies: dict[str, Policy] = field(default_factory=dict)  # served, by name; the first is the default
    packed: bool = False  # whether numba's packed-weight kernels do the heavy work (else BLAS on float32)
    threads: int | None = None  # the kernels' threads (MIMO_ENGINE_THREADS); None: every core
    calibration: np.ndarray | None = None  # next-token entropies (nats) of the native model on calibration text
    # steps of few rows run their blocks fused (`mimo_engine.fused`) where the weights allow; None: `model.block`
    fused_blocks: FusedBlocks | None = None
    _plans: dict[Any, WeightPlan] = field(default_factory=dict, repr=False)
    _reads: dict[WeightPlan, tuple] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, name: str, cache_dir: Path, policies: Sequence[str] | None = None, threads: int | None = None,
             report: Callable[..., None] | None = None) -> LoadedModel:
        """Load model `name`, a registry model in `cache_dir` (pulled on first use) or a GGUF file's path (read where
        it is), with its weights in the formats of `policies` (see `resolve_policies`) and its kernels on `threads`
        threads. `report(state, done, total)` hears how far it is: ("pulling", bytes done, bytes total) while it is
        pulled, then ("loading", 0, 0)."""
        on_pull = None if report is None else lambda done, total: report("pulling", done, total)
        path = Path(served_model_name(name)) if is_model_path(name) else ensure_model(name, cache_dir, on_pull)
        if report is not None:
            report("loading", 0, 0)
        return cls.from_gguf(name, path, policies, threads)

    @classmethod
    def from_gguf(cls, name: str, path: Path, policies: Sequence[str] | None = None,
                  threads: int | None = None) -> LoadedModel:
        """Load the GGUF file at `path` under the name `name` (`policies` and `threads` as for `load`)."""
        names = resolve_policies(policies)
        reader = GGUFFile(path)
        config = read_config(reader)
        spec = MODELS.get(name)
        weights_id = spec.sha256 if spec else f"{path.resolve()}:{path.stat().st_size}:{path.stat().st_mtime_ns}"
        statics = {n: policy.static_policy(n) for n in names if policy.parse(n)[0] != "entropy"}
        held = {g: {getattr(p.high, g) for p in statics.values()} for g in GROUPS}
        if len(statics) < len(names):  # entropy: native and the low format
            held = {g: held[g] | {"native", policy.LOW_FORMAT} for g in GROUPS}
        weights, natives = load_weights(reader, config, held)
        packed = any(f != "f32" for g in GROUPS for f in held[g] | set(np.ravel(natives[g])))
        model = cls(name, config, Tokenizer.from_gguf(reader), weights, "", natives, packed=packed, threads=threads,
                    fused_blocks=FusedBlocks(config) if packed else None)
        model.use_threads()  # the calibration pass below runs the kernels in this thread
        for n in names:
            model.policies[n] = statics.get(n) or model.calibrated(n)
        # Cached KV blocks, on disk too, are reused only under this exact identity: the weights (the tokenizer is in
        # the same GGUF), the engine's version (its kernels' rounding is in every key and value: blocks of an older
        # engine turned a greedy answer here), the formats the default plan really reads (not the policy's name:
        # what "native" reads has changed before), the KV dtype and the block size.
        default = model.resolve(model.plan(model.policy(None)))
        model.fingerprint = (f"{weights_id}:engine={package_version('mimo-engine')}:plan={default}:kv=float32:"
                             f"block={BLOCK_SIZE}")
        return model

    def use_threads(self) -> None:
        """Set the calling thread up to run this model: when packed kernels do the heavy work, numba gets the
        model's threads and BLAS one (numba's count is per thread: each thread that runs a forward pass calls this)."""
        if self.packed:
            configure_threads(self.threads)

    def policy(self, name: str | None) -> Policy:
        """Policy `name` (None: the default): any policy whose formats this model holds is served, not only those
        it was loaded for. UnknownPolicy or PolicyNotServed otherwise, naming the policies loaded."""
        if name is None:
            return next(iter(self.policies.values()))
        if name not in self.policies:
            kind, _ = policy.parse(name)
            candidate = Policy(name, Assignment.every("native"), thresholds={"attn": 0.0}) if kind == "entropy" \
                else policy.static_policy(name)
            reads = (candidate.high, candidate.low) if candidate.thresholds else (candidate.high,)
            if not all(self.holds(self.resolve(a)) for a in reads):
                raise PolicyNotServed(f"precision policy {name!r} reads weight formats {self.name} was not loaded "
                                      f"with (loaded for: {', '.join(self.policies)}; MIMO_PRECISION_POLICIES "
                                      f"chooses them at start)")
            self.policies[name] = self.calibrated(name) if kind == "entropy" else candidate
        return self.policies[name]

    def holds(self, plan: WeightPlan) -> bool:
        """Whether every weight the plan names is held in the plan's format."""
        w = self.weights
        return (all(f in layer.wqkv for layer, f in zip(w.layers, plan.attn))
                and all(f in layer.w_gate_up for layer, f in zip(w.layers, plan.mlp)) and plan.head in w.lm_head)

    def calibrated(self, name: str) -> Policy:
        """The entropy policy `name`, its thresholds set from this model's calibration entropies."""
        if self.calibration is None:
            self.calibration = calibration_entropies(self)
        native = self.plan_bytes(self.resolve(WeightPlan.native(self.config.n_layer)))
        counts = self.group_weights()
        bits = {g: 8 * sum(b for (group, _), b in native.items() if group == g) / counts[g] for g in GROUPS}
        return policy.entropy_policy(name, self.calibration, counts, bits)

    def plan(self, p: Policy, entropy: float | None = None) -> WeightPlan:
        """The weight plan of a token under policy `p` whose previous next-token entropy was `entropy` (None: a
        prompt token), with "native" resolved to each group's format."""
        return self.resolve(p.assign(entropy))

    def resolve(self, plan: WeightPlan | Assignment) -> WeightPlan:
        """A plan (or an assignment) with every "native" replaced by that group's own format; cached."""
        if plan not in self._plans:
            if isinstance(plan, Assignment):
                plan = WeightPlan.every(self.config.n_layer, plan.attn, plan.mlp, plan.head)
            n = self.natives
            self._plans[plan] = WeightPlan(
                attn=tuple(n["attn"][i] if f == "native" else f for i, f in enumerate(plan.attn)),
                mlp=tuple(n["mlp"][i] if f == "native" else f for i, f in enumerate(plan.mlp)),
                head=n["head"] if plan.head == "native" else plan.head)
        return self._plans[plan]

    def group_weights(self) -> dict[str, int]:
        """Parameters of each layer group's linear weights (what one token reads once)."""
        def size(weight: dict) -> int:
            return next(iter(weight.values())).size

        w = self.weights
        return {"attn": sum(size(layer.wqkv) + size(layer.wo) for layer in w.layers),
                "mlp": sum(size(layer.w_gate_up) + size(layer.w_down) for layer in w.layers), "head": size(w.lm_head)}

    def plan_bytes(self, plan: WeightPlan) -> dict[tuple[str, str], int]:
        """Weight bytes one token under `plan` reads, by (layer group, format)."""
        out: dict[tuple[str, str], int] = {}
        for i, layer in enumerate(self.weights.layers):
            for group, fmt, matrices in (("attn", plan.attn[i], (layer.wqkv, layer.wo)),
                                         ("mlp", plan.mlp[i], (layer.w_gate_up, layer.w_down))):
                out[group, fmt] = out.get((group, fmt), 0) + sum(m[fmt].nbytes for m in matrices)
        out["head", plan.head] = out.get(("head", plan.head), 0) + self.weights.lm_head[plan.head].nbytes
        return out

    def plan_reads(self, plan: WeightPlan | None) -> tuple[dict[str, set[str]], int, int]:
        """What one token under `plan` (None: the default) reads: the formats of each layer group, the weight bytes,
        and the weights; cached."""
        plan = self.resolve(plan or WeightPlan.native(self.config.n_layer))
        if plan not in self._reads:
            formats = {g: set(f) for g, f in plan.groups().items()}
            self._reads[plan] = formats, sum(self.plan_bytes(plan).values()), sum(self.group_weights().values())
        return self._reads[plan]

    def new_pool(self, num_blocks: int) -> KVPool:
        """A KV pool of `num_blocks` blocks shaped for this model."""
        c = self.config
        return KVPool(c.n_layer, c.n_kv_head, c.head_dim, num_blocks, BLOCK_SIZE, np.float32)

    def routes(self, batch: StepBatch) -> Routes:
        """Which rows of the step read which form of each layer group: sequences whose plans pick the same format
        for a group share one product; the head's rows are rows of the wanted logits."""
        plans = [self.resolve(s.weight_plan) for s in batch.sequences]
        if len(set(plans)) == 1:  # the common case: every row reads the same forms
            p = plans[0]
            return Routes([((f, None),) for f in p.attn], [((f, None),) for f in p.mlp], ((p.head, None),))
        token_rows = np.split(np.arange(batch.num_tokens), np.cumsum([s.num_tokens for s in batch.sequences])[:-1])
        logit_rows = np.split(np.arange(batch.num_logits),
                              np.cumsum([len(s.logit_indices) for s in batch.sequences])[:-1])

        def route(formats: list[str], rows: list[np.ndarray]) -> Route:
            chosen: dict[str, list[np.ndarray]] = {}
            for fmt, r in zip(formats, rows):
                chosen.setdefault(fmt, []).append(r)
            if len(chosen) == 1:
                return ((formats[0], None),)
            return tuple((fmt, np.asarray(np.concatenate(parts))) for fmt, parts in chosen.items())

        n = self.config.n_layer
        return Routes([route([p.attn[i] for p in plans], token_rows) for i in range(n)],
                      [route([p.mlp[i] for p in plans], token_rows) for i in range(n)],
                      route([p.head for p in plans], logit_rows))

    def forward(self, batch: StepBatch, pool: KVPool, read: dict | None = None) -> np.ndarray:
        """Run one step: store every scheduled token's keys and values in `pool`, and return float32 logits
        [batch.num_logits, V] for the wanted positions, sequence by sequence in batch order. Each sequence reads
        the weight formats of its plan; `read`, if given, gets what the products read and took: (group, format) ->
        [bytes, product calls, seconds], and ("attention", "kv") the attention over the cache's calls and seconds."""
        routes = self.routes(batch)
        tokens = np.asarray([t for s in batch.sequences for t in s.token_ids])  # [N]
        positions = np.concatenate([np.arange(s.start_position, s.end_position) for s in batch.sequences])  # [N]
        attend = PagedAttention(batch, pool)
        h = hidden_states(self.weights, self.config, tokens, positions, attend, routes,
                          self.fused_blocks or block)  # [N, d]
        starts = np.cumsum([0, *(s.num_tokens for s in batch.sequences)])
        wanted = [first + i for s, first in zip(batch.sequences, starts) for i in s.logit_indices]
        out = logits(h[np.asarray(wanted, dtype=np.int64)], self.weights, routes)  # [num_logits, V]
        if read is not None:
            for key, figures in (*routes.read.items(), (("attention", "kv"), [0, attend.calls, attend.seconds])):
                total = read.setdefault(key, [0, 0, 0.0])
                for i, figure in enumerate(figures):
                    total[i] += figure
        return out


def calibration_entropies(model: LoadedModel) -> np.ndarray:
    """Next-token entropies (nats) of the model under its native formats at every position of the calibration
    text: what the entropy policy's thresholds are quantiles of."""
    ids = model.tokenizer.encode(CALIBRATION_TEXT)[: model.config.context_length]
    blocks = -(-len(ids) // BLOCK_SIZE)
    step = StepBatch((ScheduledSequence("calibration", tuple(ids), 0, tuple(range(blocks)), tuple(range(len(ids))),
                                        WeightPlan.native(model.config.n_layer)),))
    return entropy_nats(model.forward(step, model.new_pool(blocks)))


@dataclass(frozen=True)
class PrecisionPlan:
    """A request's precision, resolved once by the runtime and handed down: its policy, the weight plan its prompt
    tokens read, and (an entropy policy's) how a decoded token's plan follows from the distribution before it."""

    policy: Policy
    prompt: WeightPlan
    decode: Callable[[float | None], WeightPlan]  # the model's plan under `policy` for that entropy (nats)

    @classmethod
    def of(cls, model: LoadedModel, name: str | None) -> PrecisionPlan:
        """The plan of policy `name` (None: the default) on `model`; a ValueError if it is unknown or not held."""
        p = model.policy(name)
        return cls(p, model.plan(p), lambda entropy: model.plan(p, entropy))

    def next_plan(self, logits: np.ndarray) -> WeightPlan:
        """What the next token reads, given the next-token logits [V] it was sampled from."""
        return self.decode(float(entropy_nats(logits)) if self.policy.thresholds else None)


@dataclass
class SequenceTokens:
    """A sequence's tokens (prompt, then generated), how many of them are in the KV cache, the weight plan its
    prompt was computed under, and how many tokens were computed under that plan (None: all). Only those may be
    committed for reuse, in the plan's namespace of the block manager: a block's keys and values depend on the
    weight formats they were computed with, not only on its tokens and the model."""

    token_ids: list[int]
    num_computed: int = 0
    plan_until: int | None = None
    plan: WeightPlan | None = None  # None: the engine's default plan
    num_prompt: int = 0  # the first tokens, its prompt's (the rest were generated or drafted)


@dataclass(frozen=True)
class Work:
    """A sequence's request for one step: compute its next `num_tokens` pending tokens; `logits` says for which of
    them logits come back ("last", "all" or "none")."""

    seq_id: Hashable
    num_tokens: int
    logits: str = "last"
    plan: WeightPlan | None = None  # the weight formats its tokens read (None: the engine's default)


class EngineCore:
    """Sequences over one model: their tokens, their KV blocks (pool + manager), and the step that computes them."""

    def __init__(self, model: LoadedModel, num_blocks: int, tiers: TierConfig = TierConfig()) -> None:
        self.model = model
        self.pool = model.new_pool(num_blocks)
        self.blocks = KVCacheManager(num_blocks, BLOCK_SIZE, model.fingerprint, pool=self.pool, tiers=tiers)
        self.plan = model.plan(model.policy(None))  # the weight formats of work that names none
        self.sequences: dict[Hashable, SequenceTokens] = {}

    def namespace(self, plan: WeightPlan | None) -> str:
        """The block manager's namespace of blocks computed under `plan`: the default plan's is the model's own
        (""), any other's is named by the formats it reads, so that requests under one policy share their blocks."""
        if plan is None or plan == self.plan:
            return ""
        return hashlib.blake2b(repr(plan).encode(), digest_size=8).hexdigest()

    def add(self, seq_id: Hashable, prompt: Sequence[int], reuse: bool = True, plan: WeightPlan | None = None
            ) -> dict[str, int]:
        """Start a sequence from `prompt`, to be computed under `plan` (None: the default); with `reuse`, its longest
        prefix cached under the same plan is taken from cached blocks, in whichever tier they are. Returns the prompt
        tokens reused from each tier (they are not computed again). NoFreeBlocks if the pool is short."""
        if not prompt:
            raise ValueError("a sequence needs at least one prompt token")
        if len(prompt) > self.model.config.context_length:
            raise ValueError(f"{len(prompt)} prompt tokens exceed {self.model.name}'s context of "
                             f"{self.model.config.context_length}")
        namespace = self.namespace(plan)
        prefix = self.blocks.lookup(prompt, namespace) if reuse else Prefix([], [])
        self.blocks.allocate(seq_id, len(prefix.blocks) * BLOCK_SIZE, prefix=prefix.blocks, namespace=namespace)
        self.sequences[seq_id] = SequenceTokens(list(prompt), len(prefix.blocks) * BLOCK_SIZE, plan=plan or self.plan,
                                                num_prompt=len(prompt))
        return prefix.tokens_by_tier(BLOCK_SIZE)

    def append(self, seq_id: Hashable, token_ids: Sequence[int]) -> None:
        """Tokens to compute in a later step (a sampled token, a drafted block)."""
        seq = self.sequences[seq_id]
        if len(seq.token_ids) + len(token_ids) > self.model.config.context_length:
            raise ValueError(f"{self.model.name}'s context of {self.model.config.context_length} tokens is full")
        seq.token_ids.extend(token_ids)

    def fork(self, seq_id: Hashable, child_id: Hashable) -> None:
        """A new sequence sharing every token and KV block of `seq_id` (blocks are copied only when written)."""
        self.blocks.fork(seq_id, child_id)
        seq = self.sequences[seq_id]
        self.sequences[child_id] = SequenceTokens(list(seq.token_ids), seq.num_computed, seq.plan_until, seq.plan,
                                                  seq.num_prompt)

    def truncate(self, seq_id: Hashable, num_tokens: int) -> None:
        """Keep only the first `num_tokens` tokens (rejected speculative tokens are rolled back)."""
        seq = self.sequences[seq_id]
        del seq.token_ids[num_tokens:]
        if seq.num_computed > num_tokens:
            seq.num_computed = num_tokens
            self.blocks.truncate(seq_id, num_tokens)
        if seq.plan_until is not None and seq.plan_until >= num_tokens:
            seq.plan_until = None  # what was computed under another plan is gone

    def free(self, seq_id: Hashable) -> None:
        """Forget the sequence and release its blocks; harmless if it is already gone."""
        self.sequences.pop(seq_id, None)
        self.blocks.free(seq_id)

    def close(self) -> None:
        """Forget every sequence and move the cached blocks down to the disk tier, for the next engine process."""
        for seq_id in list(self.sequences):
            self.free(seq_id)
        self.blocks.spill()

    def pending(self, seq_id: Hashable) -> int:
        """Tokens of the sequence not yet in the KV cache."""
        seq = self.sequences[seq_id]
        return len(seq.token_ids) - seq.num_computed

    def batch(self, work: Sequence[Work]) -> StepBatch:
        """The step that computes `work`, with blocks allocated for it (NoFreeBlocks, nothing allocated, if short)."""
        scheduled = []
        done: list[Hashable] = []
        try:
            for w in work:
                seq = self.sequences[w.seq_id]
                start, end = seq.num_computed, seq.num_computed + w.num_tokens
                if not 0 < w.num_tokens <= len(seq.token_ids) - start:
                    raise ValueError(f"sequence {w.seq_id!r} has {len(seq.token_ids) - start} pending tokens, "
                                     f"not {w.num_tokens}")
                table = self.blocks.allocate(w.seq_id, end)
                done.append(w.seq_id)
                wanted = {"last": (w.num_tokens - 1,), "all": tuple(range(w.num_tokens)), "none": ()}[w.logits]
                scheduled.append(ScheduledSequence(w.seq_id, tuple(seq.token_ids[start:end]), start, tuple(table),
                                                   wanted, w.plan or self.plan, prompt=start < seq.num_prompt))
        except BaseException:
            for seq_id in done:  # give back what this batch allocated beyond the computed tokens
                self.blocks.truncate(seq_id, self.sequences[seq_id].num_computed)
            raise
        return StepBatch(tuple(scheduled))

    def prefill(self, seq_id: Hashable, prompt: Sequence[int], logits: str = "last", reuse: bool = True,
                chunk: int | None = None) -> np.ndarray:
        """Start a sequence and compute its whole prompt alone, in chunks of `chunk` tokens (default: one pass);
        its logits as `logits` asks ("last": [1, V], "all": [computed tokens, V]). For offline use: the scheduler
        instead spreads prompts over steps shared with other sequences."""
        self.add(seq_id, prompt, reuse)
        rows = []
        while pending := self.pending(seq_id):
            n = min(chunk or pending, pending)
            (out,) = self.step([Work(seq_id, n, logits if logits == "all" or n == pending else "none")])
            rows.append(out)
        return np.concatenate(rows)

    def step(self, work: Sequence[Work], read: dict | None = None) -> list[np.ndarray]:
        """Compute `work` in one forward pass; each item's logits ([rows, V], rows as its `logits` asked). `read`:
        as `LoadedModel.forward` fills it."""
        batch = self.batch(work)
        out = self.model.forward(batch, self.pool, read)  # [num_logits, V]
        results, row = [], 0
        for s in batch.sequences:
            seq = self.sequences[s.seq_id]
            seq.num_computed = s.end_position
            if seq.plan_until is None and s.weight_plan != (seq.plan or self.plan):
                seq.plan_until = s.start_position  # an entropy policy's decode tokens, each under its own plan
            committable = seq.num_computed if seq.plan_until is None else seq.plan_until
            self.blocks.commit(s.seq_id, seq.token_ids[:committable])
            results.append(out[row : row + len(s.logit_indices)])
            row += len(s.logit_indices)
        return results
