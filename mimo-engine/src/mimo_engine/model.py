"""The transformer forward pass of llama and qwen2 models, as small pure functions over arrays (picoGPT style).

Shapes: N rows of a batch (the new tokens of all sequences, packed), d = n_embd, H = n_head, Hkv = n_kv_head,
hd = head_dim, S = cached positions of one sequence, V = vocab_size. Every product with a weight goes through
`linear`, so that a quantized weight type can slot in there. Everything stays float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from mimo_engine.xp import xp

Array = Any  # an xp.ndarray (numpy or CuPy)
# attend(layer, q [N, H, hd], k [N, Hkv, hd], v [N, Hkv, hd]) -> [N, H hd]: stores the rows' new keys and values in
# the KV cache and returns each row's attention over its own sequence's positions up to its own
Attend = Callable[[int, Array, Array, Array], Array]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters, as the GGUF metadata gives them."""

    arch: Literal["llama", "qwen2"]
    n_layer: int
    n_embd: int
    n_head: int
    n_kv_head: int
    head_dim: int
    n_ff: int
    vocab_size: int
    context_length: int
    rope_theta: float
    # rotated pairs: "interleaved" (2i, 2i+1), as llama GGUFs permute q/k for it; "neox" (i, i + hd/2), as qwen2
    rope_style: Literal["interleaved", "neox"]
    norm_eps: float


@dataclass
class LayerWeights:
    """One transformer block's weights. Matrices are [in, out] arrays, so `linear` is a plain x @ w; their memory
    order (C, or F when in > out) is whichever BLAS reads faster."""

    attn_norm: Array  # [d]
    wqkv: Array  # [d, (H + 2 Hkv) hd]: q, k and v fused into one product
    bqkv: Array | None  # [(H + 2 Hkv) hd]: qwen2's q/k/v biases; None for llama
    wo: Array  # [H hd, d]
    ffn_norm: Array  # [d]
    w_gate_up: Array  # [d, 2 ff]: SwiGLU's gate and up fused into one product
    w_down: Array  # [ff, d]


@dataclass
class ModelWeights:
    """All weights: embeddings, one `LayerWeights` per block, the final norm and the output head."""

    token_embd: Array  # [V, d]
    layers: list[LayerWeights]
    output_norm: Array  # [d]
    lm_head: Array  # [d, V]; with tied embeddings token_embd is its transposed view


def linear(x: Array, w: Array) -> Array:
    """The product of activations with a weight stored [in, out]: the one place every weight is read."""
    return x @ w  # [N, in] @ [in, out] -> [N, out]


def rms_norm(x: Array, g: Array, eps: float) -> Array:
    """Root-mean-square normalisation with gain `g`."""
    ms = xp.square(x).sum(axis=-1, keepdims=True) / x.shape[-1]  # [N, 1]; .sum, not xp.mean: less Python per call
    return x / xp.sqrt(ms + eps) * g  # [N, d]


def silu(x: Array) -> Array:
    """x * sigmoid(x). Written with exp, which numpy computes ~2x faster than tanh; below x = -88, exp(-x) overflows
    to inf and the result is the correct limit, -0."""
    return x / (1.0 + xp.exp(-x))  # [N, ff]


@dataclass(frozen=True)
class Rope:
    """Rotary tables of N positions; rotating x is then x * cos + x[..., rotate] * sin for either pair layout."""

    cos: Array  # [N, 1, hd]: cos of each pair's angle, at both members of the pair
    sin: Array  # [N, 1, hd]: sin of each pair's angle, negated at the first member of the pair
    rotate: Array  # [hd]: the index of each member's partner


def rope_tables(positions: Array, config: ModelConfig) -> Rope:
    """The rotary tables of `positions` ([N]) in the model's pair layout."""
    hd = config.head_dim
    # float64 for the angle itself: position * frequency loses digits in float32 at long context; the table is tiny
    inv_freq = config.rope_theta ** (-xp.arange(0, hd, 2, dtype=xp.float64) / hd)  # [hd/2]
    angles = positions.astype(xp.float64)[:, None, None] * inv_freq  # [N, 1, hd/2]
    cos, sin = xp.cos(angles).astype(xp.float32), xp.sin(angles).astype(xp.float32)  # [N, 1, hd/2] each
    if config.rope_style == "neox":  # pairs (i, i + hd/2)
        return Rope(
            cos=xp.concatenate([cos, cos], axis=-1),  # [N, 1, hd]
            sin=xp.concatenate([-sin, sin], axis=-1),  # [N, 1, hd]
            rotate=xp.concatenate([xp.arange(hd // 2, hd), xp.arange(hd // 2)]),  # [hd]
        )
    return Rope(  # interleaved pairs (2i, 2i + 1)
        cos=xp.repeat(cos, 2, axis=-1),  # [N, 1, hd]
        sin=xp.stack([-sin, sin], axis=-1).reshape(*sin.shape[:2], hd),  # [N, 1, hd]
        rotate=xp.arange(hd) ^ 1,  # [hd]
    )


def apply_rope(x: Array, rope: Rope) -> Array:
    """Rotate each head's pairs of x ([N, h, hd]) by its position's angles."""
    return x * rope.cos + x[..., rope.rotate] * rope.sin  # [N, h, hd]


def attention(q: Array, k: Array, v: Array) -> Array:
    """Causal grouped-query attention of T new queries over all S cached positions of one sequence (S >= T)."""
    T, n_head, hd = q.shape  # q: [T, H, hd], already scaled by 1/sqrt(hd)
    n_kv, S, _ = k.shape  # k, v: [Hkv, S, hd], head-major as `read_heads` gives them; the queries are the last T
    group = n_head // n_kv  # query heads per kv head; head h reads kv head h // group
    q = q.reshape(T, n_kv, group, hd).transpose(1, 2, 0, 3)  # [Hkv, g, T, hd]
    # one [T, hd] @ [hd, S] product per query head: at T = 1 a matrix-vector product, which BLAS starts far faster
    # than the matrix product of a kv head's whole query group (measured), and k^T is a transposed view, not a copy
    scores = q @ k.transpose(0, 2, 1)[:, None]  # [Hkv, g, T, S]
    if T > 1:
        scores += xp.triu(xp.full((T, S), -xp.inf, dtype=xp.float32), k=S - T + 1)  # query t sees keys <= S-T+t
    scores -= scores.max(axis=-1, keepdims=True)  # [Hkv, g, T, S]
    xp.exp(scores, out=scores)  # [Hkv, g, T, S]
    scores /= scores.sum(axis=-1, keepdims=True)  # [Hkv, g, T, S]: softmax over the keys
    out = scores @ v[:, None]  # [Hkv, g, T, hd]
    return out.transpose(2, 0, 1, 3).reshape(T, n_head * hd)  # [T, H hd]


def mlp(x: Array, layer: LayerWeights) -> Array:
    """SwiGLU feed-forward."""
    gate_up = linear(x, layer.w_gate_up)  # [N, 2 ff]
    ff = gate_up.shape[-1] // 2
    return linear(silu(gate_up[:, :ff]) * gate_up[:, ff:], layer.w_down)  # [N, d]


def block(x: Array, index: int, layer: LayerWeights, config: ModelConfig, rope: Rope, attend: Attend) -> Array:
    """One pre-norm transformer block over the packed rows of a step; `attend` is the KV cache's side of it."""
    N = x.shape[0]
    H, Hkv, hd = config.n_head, config.n_kv_head, config.head_dim
    qkv = linear(rms_norm(x, layer.attn_norm, config.norm_eps), layer.wqkv)  # [N, (H + 2 Hkv) hd]
    if layer.bqkv is not None:
        qkv += layer.bqkv  # [N, (H + 2 Hkv) hd]
    qk = apply_rope(qkv[:, : (H + Hkv) * hd].reshape(N, H + Hkv, hd), rope)  # [N, H + Hkv, hd]
    q, k = qk[:, :H], qk[:, H:]  # [N, H, hd], [N, Hkv, hd]: one rope call rotates both
    q *= 1.0 / math.sqrt(hd)  # [N, H, hd]: attention's scale, once for every sequence of the batch
    v = qkv[:, (H + Hkv) * hd :].reshape(N, Hkv, hd)  # [N, Hkv, hd]
    x = x + linear(attend(index, q, k, v), layer.wo)  # [N, d]
    return x + mlp(rms_norm(x, layer.ffn_norm, config.norm_eps), layer)  # [N, d]


def hidden_states(weights: ModelWeights, config: ModelConfig, tokens: Array, positions: Array, attend: Attend) -> Array:
    """Final-normed hidden states of a step's tokens, packed from several sequences, at their `positions`."""
    rope = rope_tables(positions, config)  # [N, 1, hd] tables
    x = weights.token_embd[tokens]  # [N, d]
    for index, layer in enumerate(weights.layers):
        x = block(x, index, layer, config, rope, attend)  # [N, d]
    return rms_norm(x, weights.output_norm, config.norm_eps)  # [N, d]


def logits(h: Array, weights: ModelWeights) -> Array:
    """Next-token logits of hidden states."""
    return linear(h, weights.lm_head)  # [N, V]
