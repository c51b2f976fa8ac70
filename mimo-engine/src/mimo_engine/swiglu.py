"""SwiGLU's activation, silu(gate) * up, compiled once for both forward paths.

The reference forward (`model.mlp`) and the fused decode step (`mimo_engine.fused`) must round every activation the
same, to the bit: the MLP's output is quantized to int8 next, and one code rounded the other way changed a logit by
up to 1 nat on smollm2-135m (measured: numpy's SIMD exp and the C library's differ in the last bit for 17% of
inputs). So the exponential is written here, as IEEE operations in a fixed order that LLVM vectorizes without a
math library: 2^k by its bits times a degree-7 Taylor polynomial on |r| <= ln 2 / 2 (truncation error below 1e-8
relative, under float32's rounding).
"""

from __future__ import annotations

import numba
import numpy as np
from precision_router.bits import bits_to_float

LOG2E = np.float32(1.4426950408889634)
LN2_HIGH = np.float32(0.693145751953125)  # ln 2 in two parts: k * LN2_HIGH is exact for |k| < 2^11
LN2_LOW = np.float32(1.428606765330187e-06)
ROUNDER = np.float32(12582912.0)  # 1.5 * 2^23: x + it - it is x rounded to the nearest integer, for |x| < 2^22
LOWEST, HIGHEST = np.float32(-87.3), np.float32(88.3)  # exp stays a normal float32: 2^k for k in [-126, 127]


@numba.njit(inline="always")
def exp32(v):  # pragma: no cover - compiled
    """e^v in float32 (within 2 ulp of the exact value; NaN stays NaN), for v clamped to [LOWEST, HIGHEST]."""
    v = LOWEST if v < LOWEST else (HIGHEST if v > HIGHEST else v)  # a NaN fails both tests and passes through
    k = (v * LOG2E + ROUNDER) - ROUNDER  # (np.rint is a C library call, which LLVM does not vectorize)
    r = (v - k * LN2_HIGH) - k * LN2_LOW  # |r| <= ln 2 / 2
    p = np.float32(1.0 / 5040)
    for c in (1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0):
        p = p * r + np.float32(c)
    # k is converted only when it is a number: converting a NaN is undefined and lets LLVM drop the NaN's path
    two_k = bits_to_float(np.uint32(np.int32(k if k == k else 0) + 127) << np.uint32(23))  # 2^k
    return p * two_k


@numba.njit(inline="always")
def silu(v):  # pragma: no cover - compiled
    """v * sigmoid(v) = v / (1 + e^-v); below v = -88.3 a tiny negative number rather than -0."""
    return v / (np.float32(1.0) + exp32(-v))


@numba.njit(cache=True, nogil=True, error_model="numpy")  # IEEE division: a zero check would stop vectorizing
def swiglu_into(gate_up, out):  # pragma: no cover - compiled
    """out [N, ff] = silu(gate) * up of gate_up [N, 2 ff] (gate, then up)."""
    ff = out.shape[1]
    for r in range(out.shape[0]):
        for i in range(ff):
            out[r, i] = silu(gate_up[r, i]) * gate_up[r, ff + i]


def swiglu(gate_up: np.ndarray) -> np.ndarray:
    """silu(gate) * up: [N, 2 ff] float32 -> [N, ff]."""
    out = np.empty((gate_up.shape[0], gate_up.shape[1] // 2), dtype=np.float32)  # [N, ff]
    swiglu_into(np.ascontiguousarray(gate_up, dtype=np.float32), out)
    return out
