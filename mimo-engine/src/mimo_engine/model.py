"""The transformer forward pass of llama and qwen2 models, as small pure functions over arrays (picoGPT style).

Shapes: N rows of a batch (the new tokens of all sequences, packed), d = n_embd, H = n_head, Hkv = n_kv_head,
hd = head_dim, S = cached positions of one sequence, V = vocab_size. Every product with a weight goes through
`linear`, on one of the weight's stored forms: a float32 [in, out] array (BLAS) or a packed [out, in] matrix
(`precision_router.kernels`). Each layer group of a step may read a different form for different rows (`Routes`);
activations stay float32.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from precision_router.formats import Packed, Stacked, dequantize
from precision_router.kernels import matmul

from mimo_engine.swiglu import swiglu


Array = np.ndarray
# attend(layer, q [N, H, hd], k [N, Hkv, hd], v [N, Hkv, hd]) -> [N, H hd]: stores the rows' new keys and values in
# the KV cache and returns each row's attention over its own sequence's positions up to its own
Attend = Callable[[int, Array, Array, Array], Array]
# format -> stored form: "f32" a float32 [in, out] array, any other a Packed [out, in] (or, for a native form whose
# fused parts differ in type, a Stacked of them)
Weight = dict[str, Any]
# which rows of a step read which form of a weight group: (format, row indices, or None for every row) pairs
Route = tuple[tuple[str, Any], ...]


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
    """One transformer block's weights. Each matrix is a `Weight`, its stored forms by format; a float32 form is an
    [in, out] array whose memory order (C, or F when in > out) is whichever BLAS reads faster."""

    attn_norm: Array  # [d]
    wqkv: Weight  # [d, (H + 2 Hkv) hd]: q, k and v fused into one product
    bqkv: Array | None  # [(H + 2 Hkv) hd]: qwen2's q/k/v biases; None for llama
    wo: Weight  # [H hd, d]
    ffn_norm: Array  # [d]
    w_gate_up: Weight  # [d, 2 ff]: SwiGLU's gate and up fused into one product
    w_down: Weight  # [ff, d]


@dataclass
class ModelWeights:
    """All weights: embeddings, one `LayerWeights` per block, the final norm and the output head."""

    token_embd: Array | Packed | RowTable  # [V, d], rows looked up
    layers: list[LayerWeights]
    output_norm: Array  # [d]
    lm_head: Weight  # [d, V]


@dataclass
class Routes:
    """The forms a step reads: a Route per block for attention and for the MLP, one for the head; and, filled in
    as the products run, what they read and took: (group, format) -> [bytes, product calls, seconds]."""

    attn: list[Route]
    mlp: list[Route]
    head: Route
    read: dict[tuple[str, str], list] = field(default_factory=dict)

    def count(self, group: str, fmt: str, nbytes: int, seconds: float) -> None:
        """One product (or fused block) more under (group, format): its bytes read and its seconds."""
        seen = self.read.setdefault((group, fmt), [0, 0, 0.0])
        seen[0] += nbytes
        seen[1] += 1
        seen[2] += seconds


def stored_format(w: Array | Packed | Stacked) -> str:
    """The format of a stored form."""
    return "f32" if isinstance(w, np.ndarray) else w.fmt


def linear(x: Array, w: Array | Packed | Stacked) -> Array:
    """The product of activations with one stored form of a weight: the one place every weight is read."""
    return x @ w if isinstance(w, np.ndarray) else matmul(x, w)  # [N, in] @ [in, out] -> [N, out]


def routed(x: Array, weight: Weight, route: Route, group: str, routes: Routes) -> Array:
    """x @ W where each set of rows reads its own form of W (one product per form); counts the bytes read and the
    time taken (two clock reads a product: under a microsecond against tens for the product)."""
    out = None
    for fmt, rows in route:
        w = weight[fmt]
        began = time.perf_counter()
        part = linear(x if rows is None else x[rows], w)  # [rows, out]
        took = time.perf_counter() - began
        if rows is None:
            out = part
        else:
            out = np.empty((x.shape[0], part.shape[1]), dtype=part.dtype) if out is None else out  # [N, out]
            out[rows] = part
        routes.count(group, stored_format(w), w.nbytes, took)
    return out


class RowTable(Protocol):
    """A table that decodes its own rows: the embeddings in the GGUF file's own quantization."""

    shape: tuple[int, int]

    def rows(self, ids: Array) -> Array: ...  # [N] -> [N, d] float32


def embed(table: Array | Packed | RowTable, tokens: Array) -> Array:
    """The embedding rows of `tokens`, decoded from a packed table."""
    if isinstance(table, np.ndarray):
        return table[tokens]  # [N, d]
    ids = np.asarray(tokens)
    if not isinstance(table, Packed):
        return table.rows(ids)  # [N, d]
    rows = Packed(table.fmt, (len(ids), table.shape[1]), table.codes[ids],
                  None if table.scales is None else table.scales[ids])
    return np.asarray(dequantize(rows))  # [N, d]


def rms_norm(x: Array, g: Array, eps: float) -> Array:
    """Root-mean-square normalisation with gain `g`."""
    ms = np.square(x).sum(axis=-1, keepdims=True) / x.shape[-1]  # [N, 1]; .sum, not np.mean: less Python per call
    return x / np.sqrt(ms + eps) * g  # [N, d]


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
    inv_freq = config.rope_theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)  # [hd/2]
    angles = positions.astype(np.float64)[:, None, None] * inv_freq  # [N, 1, hd/2]
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)  # [N, 1, hd/2] each
    if config.rope_style == "neox":  # pairs (i, i + hd/2)
        return Rope(
            cos=np.concatenate([cos, cos], axis=-1),  # [N, 1, hd]
            sin=np.concatenate([-sin, sin], axis=-1),  # [N, 1, hd]
            rotate=np.concatenate([np.arange(hd // 2, hd), np.arange(hd // 2)]),  # [hd]
        )
    return Rope(  # interleaved pairs (2i, 2i + 1)
        cos=np.repeat(cos, 2, axis=-1),  # [N, 1, hd]
        sin=np.stack([-sin, sin], axis=-1).reshape(*sin.shape[:2], hd),  # [N, 1, hd]
        rotate=np.arange(hd) ^ 1,  # [hd]
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
        scores += np.triu(np.full((T, S), -np.inf, dtype=np.float32), k=S - T + 1)  # query t sees keys <= S-T+t
    scores -= scores.max(axis=-1, keepdims=True)  # [Hkv, g, T, S]
    np.exp(scores, out=scores)  # [Hkv, g, T, S]
    scores /= scores.sum(axis=-1, keepdims=True)  # [Hkv, g, T, S]: softmax over the keys
    out = scores @ v[:, None]  # [Hkv, g, T, hd]
    return out.transpose(2, 0, 1, 3).reshape(T, n_head * hd)  # [T, H hd]


def mlp(x: Array, layer: LayerWeights, route: Route, routes: Routes) -> Array:
    """SwiGLU feed-forward."""
    gate_up = routed(x, layer.w_gate_up, route, "mlp", routes)  # [N, 2 ff]
    return routed(swiglu(gate_up), layer.w_down, route, "mlp", routes)  # silu(gate) * up: [N, ff] -> [N, d]


def block(x: Array, index: int, layer: LayerWeights, config: ModelConfig, rope: Rope, attend: Attend,
          routes: Routes) -> Array:
    """One pre-norm transformer block over the packed rows of a step; `attend` is the KV cache's side of it."""
    N = x.shape[0]
    H, Hkv, hd = config.n_head, config.n_kv_head, config.head_dim
    route = routes.attn[index]
    qkv = routed(rms_norm(x, layer.attn_norm, config.norm_eps), layer.wqkv, route, "attn", routes)  # [N, (H+2Hkv)hd]
    if layer.bqkv is not None:
        qkv += layer.bqkv  # [N, (H + 2 Hkv) hd]
    qk = apply_rope(qkv[:, : (H + Hkv) * hd].reshape(N, H + Hkv, hd), rope)  # [N, H + Hkv, hd]
    q, k = qk[:, :H], qk[:, H:]  # [N, H, hd], [N, Hkv, hd]: one rope call rotates both
    q *= 1.0 / math.sqrt(hd)  # [N, H, hd]: attention's scale, once for every sequence of the batch
    v = qkv[:, (H + Hkv) * hd :].reshape(N, Hkv, hd)  # [N, Hkv, hd]
    x = x + routed(attend(index, q, k, v), layer.wo, route, "attn", routes)  # [N, d]
    return x + mlp(rms_norm(x, layer.ffn_norm, config.norm_eps), layer, routes.mlp[index], routes)  # [N, d]


def hidden_states(weights: ModelWeights, config: ModelConfig, tokens: Array, positions: Array, attend: Attend,
                  routes: Routes, run_block: Callable[..., Array] = block) -> Array:
    """Final-normed hidden states of a step's tokens, packed from several sequences, at their `positions`;
    `run_block` computes each block as `block` does (the fused decode step passes its own)."""
    rope = rope_tables(positions, config)  # [N, 1, hd] tables
    x = embed(weights.token_embd, tokens)  # [N, d]
    for index, layer in enumerate(weights.layers):
        x = run_block(x, index, layer, config, rope, attend, routes)  # [N, d]
    return rms_norm(x, weights.output_norm, config.norm_eps)  # [N, d]


def logits(h: Array, weights: ModelWeights, routes: Routes) -> Array:
    """Next-token logits of hidden states (the rows the head's route names are rows of `h`)."""
    return routed(h, weights.lm_head, routes.head, "head", routes)  # [N, V]
