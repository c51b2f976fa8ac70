"""The fused decode step: one compiled call per transformer block for a step of a few rows.

A decode step (one token a sequence, or a drafted block) runs each block in `model.block` as a dozen numpy calls and
four products, whose fixed costs add up to the weight reads themselves at batch 1: on smollm2-135m 2.7 ms of an
11.4 ms step were not products (`mimo-engine bench`'s profile). `FusedBlocks` computes a block whose two layer groups
each read one integer form for every row (the default, native policy's case) as one compiled call: the norms, the
q/k/v product (each of up to three stacked parts in its own format), bias, rope, the write of the new keys and
values into the pool, the paged attention over it, the output product, the MLP and the residuals. Activations are
quantized to int8 inside the call, as the integer kernels do. Scratch arrays are sized once per batch size and
kept per thread (a server's worker and a draft model's runner never share them). Any other block (float forms,
rows split between forms) runs the reference `model.block`; `model.py` stays the readable definition of the math,
and the tests compare the two.
"""

from __future__ import annotations

import math
import threading
import time
from functools import cache
from typing import Any, NamedTuple

import numba
import numpy as np
from precision_router.bits import own_cache_files, stable
from precision_router.formats import Packed, Stacked
from precision_router.integer import INTEGER, quantize_rows
from precision_router.kernels import kernel_arrays

from mimo_engine.model import Array, LayerWeights, ModelConfig, Rope, Routes, block, stored_format
from mimo_engine.paged_attention import KERNEL_MAX_ROWS, PagedAttention, paged_attention_rows
from mimo_engine.swiglu import swiglu_into

FUSED_MAX_ROWS = KERNEL_MAX_ROWS  # rows of a step up to which blocks are fused: decode tokens and drafted blocks


class BlockArrays(NamedTuple):
    """One block's weights as the fused call reads them: q/k/v in up to three parts (unused ones with no rows)."""

    attn_norm: Array  # [d]
    ffn_norm: Array  # [d]
    bias: Array  # [(H + 2 Hkv) hd]: zeros for llama
    qkv1: Array  # codes of part 1 [rows1, ...] and its scales, likewise parts 2 and 3
    qkv1_scales: Array
    qkv2: Array
    qkv2_scales: Array
    qkv3: Array
    qkv3_scales: Array
    wo: Array
    wo_scales: Array
    gate_up: Array
    gate_up_scales: Array
    down: Array
    down_scales: Array


class Scratch(NamedTuple):
    """The arrays a fused block writes besides the residual stream, for one batch size N."""

    h: Array  # [N, d] a normed residual
    xq: Array  # h quantized: [N, d] int8, [N, d/32] block scales and scaled code sums
    xscales: Array
    xsums: Array
    qkv: Array  # [N, (H + 2 Hkv) hd]
    q: Array  # [N, H, hd] rotated and scaled queries
    heads: Array  # [N, H hd] attention output
    hq: Array  # heads quantized: [N, H hd] int8, [N, H hd/32] block scales and scaled code sums
    hscales: Array
    hsums: Array
    out: Array  # [N, d] a product's output before the residual add
    gate_up: Array  # [N, 2 ff]
    act: Array  # [N, ff] silu(gate) * up
    aq: Array  # act quantized: [N, ff] int8, [N, ff/32] block scales and scaled code sums
    ascales: Array
    asums: Array


def scratch(n: int, config: ModelConfig) -> Scratch:
    """Scratch arrays for steps of `n` rows."""
    d, ff, hd = config.n_embd, config.n_ff, config.head_dim
    heads = config.n_head * hd

    def quantized(width: int) -> tuple[Array, Array, Array]:
        return (np.empty((n, width), np.int8), np.empty((n, width // 32), np.float32),
                np.empty((n, width // 32), np.float32))

    f32 = np.float32
    return Scratch(np.empty((n, d), f32), *quantized(d), np.empty((n, heads + 2 * config.n_kv_head * hd), f32),
                   np.empty((n, config.n_head, hd), f32), np.empty((n, heads), f32), *quantized(heads),
                   np.empty((n, d), f32), np.empty((n, 2 * ff), f32), np.empty((n, ff), f32), *quantized(ff))


@numba.njit(cache=True, nogil=True)
def _squares_leaf(x, r, start, n):  # pragma: no cover - compiled
    """The sum of x[r, start : start + n]^2 (n <= 128) as numpy adds it: eight running sums, then the rest."""
    if n < 8:
        total = np.float32(0.0)
        for i in range(start, start + n):
            total += x[r, i] * x[r, i]
        return total
    s0, s1, s2, s3 = x[r, start] * x[r, start], x[r, start + 1] * x[r, start + 1], \
        x[r, start + 2] * x[r, start + 2], x[r, start + 3] * x[r, start + 3]
    s4, s5, s6, s7 = x[r, start + 4] * x[r, start + 4], x[r, start + 5] * x[r, start + 5], \
        x[r, start + 6] * x[r, start + 6], x[r, start + 7] * x[r, start + 7]
    for i in range(start + 8, start + n - n % 8, 8):
        s0 += x[r, i] * x[r, i]
        s1 += x[r, i + 1] * x[r, i + 1]
        s2 += x[r, i + 2] * x[r, i + 2]
        s3 += x[r, i + 3] * x[r, i + 3]
        s4 += x[r, i + 4] * x[r, i + 4]
        s5 += x[r, i + 5] * x[r, i + 5]
        s6 += x[r, i + 6] * x[r, i + 6]
        s7 += x[r, i + 7] * x[r, i + 7]
    total = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for i in range(start + n - n % 8, start + n):
        total += x[r, i] * x[r, i]
    return total


def _squares_level(lower, level: int):
    """The sum of squares of up to 128 * 2^level values, in numpy's pairwise order: halves (the first a multiple of
    8) above 128 values. Unrolled by level: numba's cache cannot load a recursive function (it crashed)."""

    @numba.njit(cache=True, nogil=True)
    @own_cache_files(f"fused.squares:{level}")
    def squares(x, r, start, n):  # pragma: no cover - compiled
        if n <= 128:
            return _squares_leaf(x, r, start, n)
        half = n // 2 - (n // 2) % 8
        return lower(x, r, start, half) + lower(x, r, start + half, n - half)

    return stable(f"fused.squares:{level}", squares)


stable("fused.squares_leaf", _squares_leaf)
SQUARES_LEVELS = 6  # rows up to 128 * 2^6 = 8192 wide: past numpy's 8192-element buffer its order may differ
_sum_of_squares = _squares_leaf
for _level in range(1, SQUARES_LEVELS + 1):
    _sum_of_squares = _squares_level(_sum_of_squares, _level)


@numba.njit(inline="always")
def _rms_norm(x, g, eps, out):  # pragma: no cover - compiled
    """out = x / sqrt(mean(x^2) + eps) * g, row by row (x, out [N, d], g [d]), in `model.rms_norm`'s float order."""
    for r in range(x.shape[0]):
        root = np.sqrt(_sum_of_squares(x, r, 0, x.shape[1]) / np.float32(x.shape[1]) + eps)
        for i in range(x.shape[1]):
            out[r, i] = x[r, i] / root * g[i]


@numba.njit(inline="always")
def _add(x, y):  # pragma: no cover - compiled
    """x += y, both [N, d]."""
    for r in range(x.shape[0]):
        for i in range(x.shape[1]):
            x[r, i] += y[r, i]


@cache
def block_kernel(formats: tuple[str, ...]):
    """The fused block of one combination of formats: q/k/v parts 1-3, output, gate/up, down."""
    qkv1, qkv2, qkv3, wo, gate_up, down = (INTEGER[fmt].product_into for fmt in formats)

    # no fastmath: every value that is rounded to int8 next must equal the reference's to the bit (a rounding that
    # goes the other way moved a logit by up to 1 nat: layer 0's inputs, embedding rows of 8-bit codes, sit on
    # rounding ties), and a NaN must stay a NaN
    @numba.njit(cache=True, nogil=True)
    @own_cache_files(f"fused.block:{':'.join(formats)}")
    def fused_block(x, w, eps, cos, sin, rotate, scale, k_pool, v_pool, layer, write_slots, rows, row_slots,
                    row_start, row_len, s):  # pragma: no cover - compiled
        """x [N, d] (updated in place) through one block; the rows' keys and values go to the pool's `layer`."""
        n = x.shape[0]
        n_head, hd = s.q.shape[1], s.q.shape[2]
        n_kv = k_pool.shape[1]
        # attention: norm, q/k/v product, bias, rope (queries scaled), keys and values stored, attention, output
        _rms_norm(x, w.attn_norm, eps, s.h)
        quantize_rows(s.h, s.xq, s.xscales, s.xsums)
        qkv1(w.qkv1, w.qkv1_scales, s.xq, s.xscales, s.xsums, s.qkv, 0)
        qkv2(w.qkv2, w.qkv2_scales, s.xq, s.xscales, s.xsums, s.qkv, w.qkv1.shape[0])
        qkv3(w.qkv3, w.qkv3_scales, s.xq, s.xscales, s.xsums, s.qkv, w.qkv1.shape[0] + w.qkv2.shape[0])
        for r in range(n):
            for c in range(s.qkv.shape[1]):
                s.qkv[r, c] += w.bias[c]
            slot = write_slots[r]
            for h in range(n_head + n_kv):
                for i in range(hd):
                    turned = s.qkv[r, h * hd + i] * cos[r, i] + s.qkv[r, h * hd + rotate[i]] * sin[r, i]
                    if h < n_head:
                        s.q[r, h, i] = turned * scale
                    else:
                        k_pool[layer, h - n_head, slot, i] = turned
            for j in range(n_kv):
                for i in range(hd):
                    v_pool[layer, j, slot, i] = s.qkv[r, (n_head + n_kv + j) * hd + i]
        paged_attention_rows(s.q, k_pool[layer], v_pool[layer], rows, row_slots, row_start, row_len, s.heads)
        quantize_rows(s.heads, s.hq, s.hscales, s.hsums)
        wo(w.wo, w.wo_scales, s.hq, s.hscales, s.hsums, s.out, 0)
        _add(x, s.out)
        # MLP: norm, gate/up product, silu(gate) * up, down product
        _rms_norm(x, w.ffn_norm, eps, s.h)
        quantize_rows(s.h, s.xq, s.xscales, s.xsums)
        gate_up(w.gate_up, w.gate_up_scales, s.xq, s.xscales, s.xsums, s.gate_up, 0)
        swiglu_into(s.gate_up, s.act)
        quantize_rows(s.act, s.aq, s.ascales, s.asums)
        down(w.down, w.down_scales, s.aq, s.ascales, s.asums, s.out, 0)
        _add(x, s.out)

    return stable(f"fused.block:{':'.join(formats)}", fused_block)


def _parts(weight: Any) -> list[Packed] | None:
    """A weight form's parts as the fused call reads them, or None where it cannot (float, or a format without an
    integer kernel)."""
    parts = list(weight.parts) if isinstance(weight, Stacked) else [weight]
    if len(parts) > 3 or not all(isinstance(p, Packed) and p.fmt in INTEGER for p in parts):
        return None
    return parts


class FusedBlocks:
    """`model.block` for the blocks of one model: fused in steps of at most FUSED_MAX_ROWS rows where a block's
    groups each read one integer form for all rows, the reference elsewhere. Use one per model."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self._blocks: dict[tuple, tuple | None] = {}  # (block, attn form, mlp form) -> (kernel, arrays, reads)
        self._local = threading.local()  # each thread's Scratch by batch size

    def scratch(self, n: int) -> Scratch:
        """This thread's scratch arrays for `n` rows."""
        mine = self._local.__dict__.setdefault("scratch", {})
        if n not in mine:
            mine[n] = scratch(n, self.config)
        return mine[n]

    def prepared(self, index: int, layer: LayerWeights, attn: str, mlp: str) -> tuple | None:
        """Block `index`'s fused kernel, arrays and what its products read under forms `attn` and `mlp` (None if
        it cannot be fused); cached."""
        key = (index, attn, mlp)
        if key not in self._blocks:
            self._blocks[key] = self._prepare(layer, attn, mlp)
        return self._blocks[key]

    def _prepare(self, layer: LayerWeights, attn: str, mlp: str) -> tuple | None:
        if self.config.n_embd > 128 * 2**SQUARES_LEVELS:  # a norm the fused block cannot sum in numpy's order
            return None
        weights = (layer.wqkv[attn], layer.wo[attn], layer.w_gate_up[mlp], layer.w_down[mlp])
        parts = [_parts(w) for w in weights]
        if any(p is None for p in parts):
            return None
        qkv = parts[0]
        empty = qkv[0]  # unused q/k/v parts: the first one's format, no rows
        qkv = qkv + [Packed(empty.fmt, (0, empty.shape[1]), empty.codes[:0],
                            None if empty.scales is None else empty.scales[:0])] * (3 - len(qkv))
        matrices = [*qkv, *(p[0] for p in parts[1:])]
        arrays = [a for m in matrices for a in kernel_arrays(m)]
        c = self.config
        bias = layer.bqkv if layer.bqkv is not None else np.zeros((c.n_head + 2 * c.n_kv_head) * c.head_dim,
                                                                  np.float32)
        kernel = block_kernel(tuple(m.fmt for m in matrices))
        reads = [(group, stored_format(w), w.nbytes) for group, w in zip(("attn", "attn", "mlp", "mlp"), weights)]
        return kernel, BlockArrays(layer.attn_norm, layer.ffn_norm, bias, *arrays), reads

    def __call__(self, x: Array, index: int, layer: LayerWeights, config: ModelConfig, rope: Rope,
                 attend: PagedAttention, routes: Routes) -> Array:
        """`model.block`'s result (x may be overwritten); a step of more than FUSED_MAX_ROWS rows, whose rows read
        different forms, or with a prompt chunk (its attention on gathered keys), runs `model.block` itself."""
        (attn, attn_rows), *more_attn = routes.attn[index]
        (mlp, mlp_rows), *more_mlp = routes.mlp[index]
        one_form = not (more_attn or more_mlp) and attn_rows is None and mlp_rows is None
        fusable = one_form and len(x) <= FUSED_MAX_ROWS and not attend.gathered  # every row on the paged kernel
        fused = self.prepared(index, layer, attn, mlp) if fusable else None
        if fused is None:
            return block(x, index, layer, config, rope, attend, routes)
        kernel, arrays, reads = fused
        began = time.perf_counter()
        x = np.ascontiguousarray(x, dtype=np.float32)  # [N, d]
        n = x.shape[0]
        rows, row_slots, row_start, row_len = attend.kernel
        kernel(x, arrays, np.float32(config.norm_eps), rope.cos.reshape(n, -1), rope.sin.reshape(n, -1),
               rope.rotate, np.float32(1.0 / math.sqrt(config.head_dim)), attend.pool.k, attend.pool.v, index,
               attend.write_slots, rows, row_slots, row_start, row_len, self.scratch(n))
        for group, fmt, nbytes in reads:  # bytes and calls as `routed` counts them; the time is the block's
            routes.count(group, fmt, nbytes, 0.0)
        routes.count("fused", "blocks", 0, time.perf_counter() - began)
        return x
