"""A loaded model: what the server and the benchmark call (prefill a prompt, decode a batch of sequences)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFReader

from mimo_core.settings import load_settings
from mimo_engine.gguf_model import load_weights, read_config
from mimo_engine.kv import InMemoryKVCache, KVCache
from mimo_engine.model import ModelConfig, ModelWeights, hidden_states, logits
from mimo_engine.pull import ensure_model
from mimo_engine.tokenizer import Tokenizer
from mimo_engine.xp import to_numpy, xp

PREFILL_CHUNK = 512  # prompt tokens per forward pass: bounds the [T, S] attention scores of a long prompt


@dataclass
class LoadedModel:
    """A model's config, tokenizer and float32 weights, ready to run."""

    name: str
    config: ModelConfig
    tokenizer: Tokenizer
    weights: ModelWeights

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
        return cls(name, config, Tokenizer.from_gguf(reader), load_weights(reader, config))

    def new_cache(self) -> KVCache:
        """An empty KV cache for one sequence."""
        return InMemoryKVCache(self.config.n_layer, self.config.n_kv_head, self.config.head_dim)

    def prefill(self, tokens: list[int], cache: KVCache, last_only: bool = False) -> np.ndarray:
        """Run `tokens` after what `cache` holds; float32 logits [len(tokens), V] (or [1, V] with last_only)."""
        if not tokens:
            raise ValueError("prefill needs at least one token")
        self._check_room(cache, len(tokens))
        chunks = []
        for start in range(0, len(tokens), PREFILL_CHUNK):
            part = tokens[start : start + PREFILL_CHUNK]
            h = hidden_states(self.weights, self.config, xp.asarray(part), [cache], [len(part)])  # [T, d]
            if last_only:
                h = h[-1:]  # [1, d]: the lm_head of one row, not of the whole prompt
            chunks.append(h)
        h = chunks[-1] if last_only else xp.concatenate(chunks)  # [T or 1, d]
        return to_numpy(logits(h, self.weights))  # [T or 1, V]

    def decode(self, tokens: list[int], caches: list[KVCache]) -> np.ndarray:
        """One new token for each sequence, batched: float32 logits [B, V]."""
        if len(tokens) != len(caches):
            raise ValueError(f"{len(tokens)} tokens for {len(caches)} caches")
        for cache in caches:
            self._check_room(cache, 1)
        h = hidden_states(self.weights, self.config, xp.asarray(tokens), caches, [1] * len(tokens))  # [B, d]
        return to_numpy(logits(h, self.weights))  # [B, V]

    def _check_room(self, cache: KVCache, new_tokens: int) -> None:
        if cache.num_tokens + new_tokens > self.config.context_length:
            raise ValueError(
                f"{cache.num_tokens} cached + {new_tokens} new tokens exceed {self.name}'s context of "
                f"{self.config.context_length}"
            )
