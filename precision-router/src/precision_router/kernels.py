"""y = x @ W computed on the packed W.

W is a `Packed` [out, in] matrix (blocks along the input axis); x is float32 [N, in]; y is float32 [N, out]. The
formats with integer codes (`q8_0`, `mxfp4` and GGUF's own blocks) multiply int8 activations by their codes in
integer arithmetic (`precision_router.integer`) up to INTEGER_BLAS_ROWS rows, a prefill chunk included; `mxfp8` and
`bf16` have the float kernels below up to BLAS_ROWS rows. From there on a format decodes its rows in tiles to float32
for BLAS.

The float kernels run in parallel over output rows, decode each weight block once for all N rows of the batch, and
accumulate in float32. What made them fast, measured on this project's 2-core CPU:

- FP8 codes are decoded by building IEEE half-precision bits (the code's exponent and mantissa placed at the
  half's, which scales every value, subnormals included, by one power of two, multiplied back) and
  converting them with the CPU's half-to-float instruction: LLVM vectorizes that, where a 256-entry float table
  becomes gathers; bf16 is a shift.
- At batch 1 a row's products go to 32 partial sums (one block's lanes), reduced once per block; at larger batches
  a weight row is decoded once into a scratch row and four batch rows are updated per pass over it.

numba's and OpenBLAS's thread pools must not alternate (OpenBLAS workers spin after each call and a numba kernel
right after one ran 5-8x slower), so `configure_threads` gives numba the cores and BLAS one thread.
"""

from __future__ import annotations

import os

# OpenMP workers spin briefly after a kernel, then sleep: a decode step runs ~120 kernels back to back, and waking a
# sleeping worker for each one cost more than the small ones take. Measured on smollm2-135m, batch 1, 2 threads:
# 54 tok/s asleep at once (GOMP_SPINCOUNT=0), 98 spinning 1000 times, 118 at 3000; with a busy loop on the other
# core 61, 47 and 35 (spinning without bound, 8: it starves a loaded CPU). 1000 keeps most of the gain and little
# of the loss. ACTIVE, because libgomp under PASSIVE stops spinning altogether once it manages more threads than
# there are cores, as soon as a second thread runs kernels (a server's worker after its loader): 51 tok/s against
# 86 there. Either variable set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

import numba  # noqa: E402
import numpy as np
from numba import prange

from precision_router.bits import bits_to_float, half_bits_to_float, stable
from precision_router.formats import BLOCK, Packed, Stacked, dequantize, e8m0_values
from precision_router.integer import INTEGER, quantize_activations

MXFP8_UNIT = 2.0**8  # E4M3 bits likewise read 2^-8 of theirs
_ROW_TILE = 16  # output rows per parallel task: scratch is allocated once per tile, not per row
BLAS_ROWS = 32  # from this many activation rows on, a float format's weights are decoded in tiles for BLAS
# Likewise an integer format's, from many more: its kernels beat BLAS on decoded tiles at every prefill chunk measured
# (a 1,536-token prompt prefilled alone, 2 threads: smollm2-135m, chunks of 32 / 128 / 256 tokens 6.5 / 7.0 / 7.0 s
# against 10.5 / 7.4 / 8.1 s through BLAS, 512: 7.9 against 7.7; qwen2.5-coder-0.5b, chunks of 32 / 128 / 512 15.6 /
# 15.0 / 15.7 s against 26.4 / 18.2 / 16.9). BLAS pays for decoding every weight once per chunk (~80 ms a step on
# smollm2-135m), which a small chunk beside decode rows cannot amortize.
INTEGER_BLAS_ROWS = 512
TILE_ROWS = 2048  # weight rows decoded per BLAS product: a few MB, so the tile stays in cache


@numba.njit(inline="always")
def _e4m3(code):  # pragma: no cover - compiled
    """The E4M3 value of a code, times 2^-8 (its bits read as a half)."""
    return half_bits_to_float(np.uint16(((code & 0x80) << 8) | ((code & 0x7F) << 7)))


@numba.njit(inline="always")
def _bf16(code):  # pragma: no cover - compiled
    return bits_to_float(np.uint32(code) << 16)


# ---------------------------------------------------------------- one activation row: fused decode and dot


@numba.njit(parallel=True, cache=True, fastmath=True, nogil=True)
def mxfp8_matvec(codes, scales, table, x, y):  # pragma: no cover - compiled
    """y[0] = x[0] @ W.T for MXFP8 codes [out, in] and E8M0 scales [out, in/32]."""
    for o in prange(y.shape[1]):
        total = np.float32(0.0)
        for b in range(x.shape[1] // BLOCK):
            lanes = np.float32(0.0)
            for j in range(BLOCK):
                lanes += _e4m3(codes[o, b * BLOCK + j]) * x[0, b * BLOCK + j]
            total += (lanes * np.float32(MXFP8_UNIT)) * table[scales[o, b]]
        y[0, o] = total


@numba.njit(parallel=True, cache=True, fastmath=True, nogil=True)
def bf16_matvec(codes, scales, table, x, y):  # pragma: no cover - compiled
    """y[0] = x[0] @ W.T for bfloat16 bits [out, in]."""
    for o in prange(y.shape[1]):
        total = np.float32(0.0)
        for k in range(x.shape[1]):
            total += _bf16(codes[o, k]) * x[0, k]
        y[0, o] = total


# ---------------------------------------------------------------- a batch: each weight row decoded once


@numba.njit(inline="always")
def _mxfp8_row(codes, scales, table, o, row):  # pragma: no cover - compiled
    for b in range(row.shape[0] // BLOCK):
        s = np.float32(MXFP8_UNIT) * table[scales[o, b]]
        for j in range(BLOCK):
            row[b * BLOCK + j] = _e4m3(codes[o, b * BLOCK + j]) * s


@numba.njit(inline="always")
def _bf16_row(codes, scales, table, o, row):  # pragma: no cover - compiled
    for k in range(row.shape[0]):
        row[k] = _bf16(codes[o, k])


def _batched(decode_row):
    """The batch kernel of one format: a weight row decoded once into scratch, then four batch rows per pass."""

    @numba.njit(parallel=True, cache=True, fastmath=True, nogil=True)
    def matmul(codes, scales, table, x, y):  # pragma: no cover - compiled
        n, n_in = x.shape
        n_out = y.shape[1]
        for tile in prange((n_out + _ROW_TILE - 1) // _ROW_TILE):
            row = np.empty(n_in, dtype=np.float32)  # once per tile of rows, not per row
            for o in range(tile * _ROW_TILE, min(n_out, (tile + 1) * _ROW_TILE)):
                decode_row(codes, scales, table, o, row)
                i = 0
                while i + 4 <= n:
                    a0 = a1 = a2 = a3 = np.float32(0.0)
                    for k in range(n_in):
                        a0 += row[k] * x[i, k]
                        a1 += row[k] * x[i + 1, k]
                        a2 += row[k] * x[i + 2, k]
                        a3 += row[k] * x[i + 3, k]
                    y[i, o], y[i + 1, o], y[i + 2, o], y[i + 3, o] = a0, a1, a2, a3
                    i += 4
                for r in range(i, n):
                    a0 = np.float32(0.0)
                    for k in range(n_in):
                        a0 += row[k] * x[r, k]
                    y[r, o] = a0

    @numba.njit(parallel=True, cache=True, nogil=True)
    def decode_rows(codes, scales, table, start, out):  # pragma: no cover - compiled
        """out[r] = row start + r of W, as float32."""
        for r in prange(out.shape[0]):
            decode_row(codes, scales, table, start + r, out[r])

    return matmul, decode_rows


for _name in ("_e4m3", "_bf16", "_mxfp8_row", "_bf16_row"):  # named in the kernels `_batched` makes
    stable(f"kernels.{_name}", globals()[_name])
FLOAT = {  # format -> (batch-1 kernel, batch kernel, row decoder)
    "mxfp8": (mxfp8_matvec, *_batched(_mxfp8_row)),
    "bf16": (bf16_matvec, *_batched(_bf16_row)),
}
KERNELS = (*INTEGER, *FLOAT)  # every format a product can read packed
_NO_SCALES = np.zeros((1, 1), dtype=np.uint8)
E8M0 = e8m0_values(np.arange(256))  # [256] float32: every scale code's value


def kernel_arrays(w: Packed) -> tuple[np.ndarray, np.ndarray]:
    """The codes and scales of `w` as the kernels take them: float16 scales as their bits (numba has no float16
    arrays), int8 codes as uint8 for the float kernels (which read them fastest so); views, not copies."""
    codes = w.codes.view(np.uint8) if w.codes.dtype == np.int8 and w.fmt not in INTEGER else w.codes
    if w.scales is None:
        return codes, _NO_SCALES
    return codes, w.scales.view(np.uint16) if w.scales.dtype == np.float16 else w.scales


def _decode_rows(w: Packed, codes: np.ndarray, scales: np.ndarray, start: int, rows: np.ndarray) -> None:
    """rows[r] = row start + r of W (one of KERNELS, its `kernel_arrays`), as float32, by its compiled decoder."""
    if w.fmt in INTEGER:
        INTEGER[w.fmt].decode_rows(codes, scales, start, rows)
    else:
        FLOAT[w.fmt][2](codes, scales, E8M0, start, rows)


def decoded(w: Packed) -> np.ndarray:
    """W as float32 [out, in]: by its kernel's row decoder (compiled, parallel: a Q5_0 matrix of qwen2.5-coder-0.5b's
    in 1.3 ms against 63 ms in gguf's numpy, the same values), or `formats.dequantize` for a format without one."""
    if w.fmt not in KERNELS:
        return dequantize(w)
    out = np.empty(w.shape, dtype=np.float32)  # [out, in]
    _decode_rows(w, *kernel_arrays(w), 0, out)
    return out


def matmul(x: np.ndarray, w: Packed | Stacked) -> np.ndarray:
    """x [N, in] @ W, W packed [out, in] in one of KERNELS (or stacked parts of them); float32 [N, out]."""
    if isinstance(w, Stacked):
        return np.concatenate([matmul(x, part) for part in w.parts], axis=1)  # [N, out]
    if w.fmt not in KERNELS:
        raise ValueError(f"no kernel for {w.fmt!r}; kernels: {', '.join(KERNELS)}")
    n_out, n_in = w.shape
    x = np.ascontiguousarray(x, dtype=np.float32)  # [N, in]
    if x.ndim != 2 or x.shape[1] != n_in:
        raise ValueError(f"x of shape {x.shape} does not fit a weight of {n_in} inputs")
    y = np.empty((x.shape[0], n_out), dtype=np.float32)  # [N, out]
    codes, scales = kernel_arrays(w)
    if x.shape[0] >= (INTEGER_BLAS_ROWS if w.fmt in INTEGER else BLAS_ROWS):  # BLAS on decoded tiles beats a kernel
        if w.fmt in INTEGER:  # the int8 activations the integer path reads, so that a prompt's logits do not
            a = quantize_activations(x)  # depend on how it was chunked (float ones moved them by up to 0.3 nats)
            x = (a.codes.reshape(len(x), -1, BLOCK) * a.scales[..., None]).reshape(x.shape)  # [N, in]
        tile = np.empty((min(TILE_ROWS, n_out), n_in), dtype=np.float32)  # [rows, in]
        for start in range(0, n_out, TILE_ROWS):
            rows = tile[: min(TILE_ROWS, n_out - start)]
            _decode_rows(w, codes, scales, start, rows)
            y[:, start : start + len(rows)] = x @ rows.T  # [N, rows]
    elif w.fmt in INTEGER:
        INTEGER[w.fmt].product(codes, scales, x, y)
    else:
        matvec, batched, _ = FLOAT[w.fmt]
        (matvec if x.shape[0] == 1 else batched)(codes, scales, E8M0, x, y)
    return y


def configure_threads(threads: int | None = None) -> int:
    """Give numba's kernels `threads` threads (None: every core) and OpenBLAS one, so that the two pools never
    alternate. numba's count holds for the calling thread only: call it in each thread that runs the kernels.
    Returns the thread count."""
    from threadpoolctl import threadpool_limits

    # The caller resolves the setting (MIMO_ENGINE_THREADS, through mimo_core.settings): no environment read here.
    threads = max(1, min(threads or numba.config.NUMBA_NUM_THREADS, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    threadpool_limits(limits=1, user_api="blas")
    return threads
