"""A loaded model and the engine core around it: the forward pass of a step, over KV blocks in a pool.

`LoadedModel` is the model runner: weights, config, tokenizer, and `forward(batch, pool)`. `EngineCore` is what the
scheduler and the benchmark drive: it owns the pool and the block manager (`tiered_kv_cache`), keeps each sequence's
tokens, turns "run these tokens of these sequences" into a `StepBatch`, and commits the blocks each step fills so a
later prompt that starts the same way reuses them.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from tiered_kv_cache import KVCacheManager, KVPool, Prefix, TierConfig

from mimo_core.settings import load_settings
from mimo_engine.gguf_model import load_weights, read_config
from mimo_engine.model import ModelConfig, ModelWeights, hidden_states, logits
from mimo_engine.paged_attention import PagedAttention
from mimo_engine.pull import ensure_model
from mimo_engine.registry import MODELS
from mimo_engine.step import ScheduledSequence, StepBatch, WeightPlan
from mimo_engine.tokenizer import Tokenizer
from mimo_engine.xp import to_numpy, xp

BLOCK_SIZE = 16  # tokens per KV block


@dataclass
class LoadedModel:
    """A model's config, tokenizer and float32 weights, ready to run."""

    name: str
    config: ModelConfig
    tokenizer: Tokenizer
    weights: ModelWeights
    fingerprint: str  # what a KV block's identity depends on besides its tokens: weights, KV dtype and layout

    @classmethod
    def load(cls, name: str, cache_dir: Path | None = None) -> LoadedModel:
        """Load registry model `name` from `cache_dir` (default: MIMO_CACHE_DIR), pulling it on first use."""
        cache_dir = load_settings().cache_dir if cache_dir is None else cache_dir
        return cls.from_gguf(name, ensure_model(name, cache_dir))

    @classmethod
    def from_gguf(cls, name: str, path: Path) -> LoadedModel:
        """Load the GGUF file at `path` under the name `name`."""
        reader = GGUFReader(path)
        config = read_config(reader)
        spec = MODELS.get(name)
        weights_id = spec.sha256 if spec else f"{path.resolve()}:{path.stat().st_size}:{path.stat().st_mtime_ns}"
        fingerprint = f"{weights_id}:kv=float32:block={BLOCK_SIZE}"  # the tokenizer is part of the same GGUF
        return cls(name, config, Tokenizer.from_gguf(reader), load_weights(reader, config), fingerprint)

    def new_pool(self, num_blocks: int) -> KVPool:
        """A KV pool of `num_blocks` blocks shaped for this model."""
        c = self.config
        return KVPool(c.n_layer, c.n_kv_head, c.head_dim, num_blocks, BLOCK_SIZE, xp.float32, xp)

    def forward(self, batch: StepBatch, pool: KVPool) -> np.ndarray:
        """Run one step: store every scheduled token's keys and values in `pool`, and return float32 logits
        [batch.num_logits, V] for the wanted positions, sequence by sequence in batch order."""
        if len({s.weight_plan for s in batch.sequences}) > 1:
            raise ValueError("a step runs under one weight plan")
        tokens = xp.asarray([t for s in batch.sequences for t in s.token_ids])  # [N]
        positions = xp.concatenate([xp.arange(s.start_position, s.end_position) for s in batch.sequences])  # [N]
        h = hidden_states(self.weights, self.config, tokens, positions, PagedAttention(batch, pool))  # [N, d]
        starts = np.cumsum([0, *(s.num_tokens for s in batch.sequences)])
        wanted = [first + i for s, first in zip(batch.sequences, starts) for i in s.logit_indices]
        return to_numpy(logits(h[xp.asarray(wanted, dtype=xp.int64)], self.weights))  # [num_logits, V]


@dataclass
class SequenceTokens:
    """A sequence's tokens (prompt, then generated) and how many of them are in the KV cache."""

    token_ids: list[int]
    num_computed: int = 0


@dataclass(frozen=True)
class Work:
    """A sequence's request for one step: compute its next `num_tokens` pending tokens; `logits` says for which of
    them logits come back ("last", "all" or "none")."""

    seq_id: Hashable
    num_tokens: int
    logits: str = "last"


class EngineCore:
    """Sequences over one model: their tokens, their KV blocks (pool + manager), and the step that computes them."""

    def __init__(self, model: LoadedModel, num_blocks: int, tiers: TierConfig = TierConfig()) -> None:
        self.model = model
        self.pool = model.new_pool(num_blocks)
        self.blocks = KVCacheManager(num_blocks, BLOCK_SIZE, model.fingerprint, pool=self.pool, tiers=tiers)
        self.plan = WeightPlan.native(model.config.n_layer)
        self.sequences: dict[Hashable, SequenceTokens] = {}

    def add(self, seq_id: Hashable, prompt: Sequence[int], reuse: bool = True) -> dict[str, int]:
        """Start a sequence from `prompt`; with `reuse`, its longest cached prefix is taken from cached blocks, in
        whichever tier they are. Returns the prompt tokens reused from each tier (they are not computed again).
        NoFreeBlocks if the pool is short."""
        if not prompt:
            raise ValueError("a sequence needs at least one prompt token")
        if len(prompt) > self.model.config.context_length:
            raise ValueError(f"{len(prompt)} prompt tokens exceed {self.model.name}'s context of "
                             f"{self.model.config.context_length}")
        prefix = self.blocks.lookup(prompt) if reuse else Prefix([], [])
        self.blocks.allocate(seq_id, len(prefix.blocks) * BLOCK_SIZE, prefix=prefix.blocks)
        self.sequences[seq_id] = SequenceTokens(list(prompt), len(prefix.blocks) * BLOCK_SIZE)
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
        self.sequences[child_id] = SequenceTokens(list(seq.token_ids), seq.num_computed)

    def truncate(self, seq_id: Hashable, num_tokens: int) -> None:
        """Keep only the first `num_tokens` tokens (rejected speculative tokens are rolled back)."""
        seq = self.sequences[seq_id]
        del seq.token_ids[num_tokens:]
        if seq.num_computed > num_tokens:
            seq.num_computed = num_tokens
            self.blocks.truncate(seq_id, num_tokens)

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
                                                   wanted, self.plan))
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

    def step(self, work: Sequence[Work]) -> list[np.ndarray]:
        """Compute `work` in one forward pass; each item's logits ([rows, V], rows as its `logits` asked)."""
        batch = self.batch(work)
        out = self.model.forward(batch, self.pool)  # [num_logits, V]
        results, row = [], 0
        for s in batch.sequences:
            seq = self.sequences[s.seq_id]
            seq.num_computed = s.end_position
            self.blocks.commit(s.seq_id, seq.token_ids[: seq.num_computed])
            results.append(out[row : row + len(s.logit_indices)])
            row += len(s.logit_indices)
        return results
