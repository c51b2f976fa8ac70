"""Each kernel equals dequantize-then-matmul within float32 rounding, on every path (batch 1, a batch, BLAS tiles)."""

import numpy as np
import pytest

from precision_router.formats import dequantize, quantize
from precision_router.kernels import BLAS_ROWS, KERNELS, TILE_ROWS, matmul


@pytest.mark.parametrize("fmt", list(KERNELS))
@pytest.mark.parametrize("batch", [1, 3, 8, BLAS_ROWS, 64])
def test_kernel_equals_dequantize_then_matmul(fmt, batch):
    rng = np.random.default_rng(batch)
    out_rows = TILE_ROWS + 40  # more than one tile of the BLAS path, and not a multiple of the row tile
    w = quantize(rng.standard_normal((out_rows, 96)).astype(np.float32) * 0.1, fmt)
    x = rng.standard_normal((batch, 96)).astype(np.float32)
    reference = x.astype(np.float64) @ dequantize(w).astype(np.float64).T  # [batch, out]
    got = matmul(x, w)
    assert got.shape == (batch, out_rows) and got.dtype == np.float32
    scale = np.abs(x).astype(np.float64) @ np.abs(dequantize(w)).astype(np.float64).T  # what the sums add up
    assert (np.abs(got - reference) <= 96 * 2**-23 * scale + 1e-30).all()


def test_a_nan_block_poisons_only_its_own_output_row():
    x = np.ones((2, 64), dtype=np.float32)
    values = np.ones((3, 64), dtype=np.float32)
    values[1, 5] = np.nan
    for fmt in ("mxfp4", "mxfp8", "q8_0"):
        y = matmul(x, quantize(values, fmt))
        assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, [0, 2]]).all()


def test_a_weight_of_the_wrong_shape_or_format_is_refused():
    w = quantize(np.zeros((4, 64), dtype=np.float32), "mxfp4")
    with pytest.raises(ValueError, match="does not fit"):
        matmul(np.zeros((1, 32), dtype=np.float32), w)
    with pytest.raises(ValueError, match="no kernel"):
        matmul(np.zeros((1, 64), dtype=np.float32), quantize(np.zeros((4, 64), dtype=np.float32), "fp8_e5m2"))
