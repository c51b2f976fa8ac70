"""Each kernel against a float64 reference of the same operands: the integer formats (int8 activations, in their
kernels and in BLAS's tiles alike) against the dequantized weights times the dequantized int8 activations, the float
formats against the float activations; exact up to float32 rounding of the sums, for every format, at batch 1, 2-16
and from BLAS_ROWS (INTEGER_BLAS_ROWS) on."""

import json
import platform
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from precision_router.formats import dequantize, quantize
from precision_router.integer import INTEGER, VNNI, asm_instructions, quantize_activations
from precision_router.kernels import BLAS_ROWS, INTEGER_BLAS_ROWS, KERNELS, TILE_ROWS, kernel_arrays, matmul
from precision_router.testing import random_packed

def reference(x: np.ndarray, w) -> tuple[np.ndarray, np.ndarray]:
    """The float64 product the kernel computes and the sum of magnitudes that bounds its rounding."""
    if w.fmt in INTEGER:  # BLAS's tiles too multiply the int8-rounded activations
        a = quantize_activations(x)
        x = (a.codes.reshape(len(x), -1, 32) * a.scales[..., None].astype(np.float64)).reshape(x.shape)
    weights = dequantize(w).astype(np.float64)
    return x.astype(np.float64) @ weights.T, np.abs(x).astype(np.float64) @ np.abs(weights).T


@pytest.mark.parametrize("fmt", list(KERNELS))
@pytest.mark.parametrize("batch", [1, 2, 5, 13, 16, BLAS_ROWS, 40, INTEGER_BLAS_ROWS])
def test_kernel_equals_its_float64_reference(fmt, batch):
    rng = np.random.default_rng(batch)
    tiles = batch >= (INTEGER_BLAS_ROWS if fmt in INTEGER else BLAS_ROWS)
    out_rows = TILE_ROWS + 40 if tiles else 100  # more than one BLAS tile; not a multiple of 16 rows
    w = random_packed(fmt, out_rows, 512, rng)
    x = rng.standard_normal((batch, 512)).astype(np.float32)
    expected, scale = reference(x, w)
    got = matmul(x, w)
    assert got.shape == (batch, out_rows) and got.dtype == np.float32
    assert (np.abs(got - expected) <= 64 * 2**-23 * scale + 1e-30).all()


@pytest.mark.parametrize("fmt", list(INTEGER))
def test_a_row_gets_the_same_bits_however_many_rows_share_the_call(fmt):
    # rows go eight (WIDE), four or one at a time: a sequence's logits must not depend on its batch
    rng = np.random.default_rng(1)
    w, x = random_packed(fmt, 48, 512, rng), rng.standard_normal((13, 512)).astype(np.float32)
    together = matmul(x, w)
    assert all(np.array_equal(together[r : r + 1], matmul(x[r : r + 1], w)) for r in range(len(x)))


def test_the_activation_codes_are_each_block_of_32_over_its_largest_magnitude_times_127():
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    x[2, 32:] = 0  # an all-zero block: scale 0, codes 0
    a = quantize_activations(x)
    amax = np.abs(x.reshape(3, 2, 32)).max(-1)  # [3, 2]
    np.testing.assert_allclose(a.scales, amax / 127, rtol=2**-22)  # fastmath: amax times 1/127
    scale = np.repeat(a.scales, 32, axis=1).astype(np.float64)
    assert (np.abs(a.codes * scale - x) <= scale / 2 * (1 + 2**-20)).all()  # each code the nearest
    sums = a.codes.reshape(3, 2, 32).astype(int).sum(-1)  # [3, 2] each block's codes, exactly; times its scale
    assert np.array_equal(a.sums, a.scales * sums.astype(np.float32))


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the x86 mnemonics")
@pytest.mark.parametrize("fmt", list(INTEGER))
def test_the_integer_kernels_compile_to_widening_multiply_adds(fmt):
    weight = kernel_arrays(random_packed(fmt, 16, 256, np.random.default_rng(0)))
    assert asm_instructions(fmt, *weight) & {"vpdpbusd", "vpdpwssd", "vpmaddubsw", "vpmaddwd"}


@pytest.mark.skipif(not VNNI, reason="this CPU has no AVX512-VNNI (avx512vnni with avx512vl)")
@pytest.mark.parametrize("fmt", ["q8_0", "q5_0", "q4_k", "q6_k"])
def test_with_vnni_a_group_takes_one_vpdpbusd_and_no_byte_and_word_multiply_adds(fmt):
    found = asm_instructions(fmt, *kernel_arrays(random_packed(fmt, 16, 256, np.random.default_rng(0))))
    assert found == {"vpdpbusd"}


def test_a_nan_block_poisons_only_its_own_output_row():
    x = np.ones((2, 64), dtype=np.float32)
    values = np.ones((3, 64), dtype=np.float32)
    values[1, 5] = np.nan
    for fmt in ("mxfp4", "mxfp8", "q8_0"):
        y = matmul(x, quantize(values, fmt))
        assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, [0, 2]]).all()


def test_a_nan_activation_poisons_only_its_own_row():
    x = np.ones((2, 64), dtype=np.float32)
    x[0, 3] = np.nan
    y = matmul(x, quantize(np.ones((3, 64), dtype=np.float32), "q8_0"))
    assert np.isnan(y[0]).all() and np.isfinite(y[1]).all()


def test_two_threads_multiply_at_once_as_each_alone():
    rng = np.random.default_rng(7)
    work = [(rng.standard_normal((n, 512)).astype(np.float32), random_packed(fmt, 300, 512, rng))
            for n, fmt in ((1, "q4_1"), (8, "q5_0"), (3, "q8_0"), (1, "q6_k"))]
    alone = [matmul(x, w) for x, w in work]
    together: dict[int, list] = {0: [], 1: []}

    def run(thread: int) -> None:
        for _ in range(20):
            together[thread].append([matmul(x, w) for x, w in work[thread::2]])

    threads = [threading.Thread(target=run, args=(t,)) for t in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for thread in (0, 1):
        for results in together[thread]:
            assert all(np.array_equal(got, want) for got, want in zip(results, alone[thread::2]))


def test_a_weight_of_the_wrong_shape_or_format_is_refused():
    w = quantize(np.zeros((4, 64), dtype=np.float32), "mxfp4")
    with pytest.raises(ValueError, match="does not fit"):
        matmul(np.zeros((1, 32), dtype=np.float32), w)
    with pytest.raises(ValueError, match="no kernel"):
        matmul(np.zeros((1, 64), dtype=np.float32), quantize(np.zeros((4, 64), dtype=np.float32), "fp8_e5m2"))


def test_the_kernel_benchmark_writes_its_figures_and_refuses_a_bad_shape(tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "kernels.py"
    out = tmp_path / "kernels.json"
    run = subprocess.run([sys.executable, str(script), "--formats", "q8_0", "q4_k", "--shape", "16x256", "--calls",
                          "2", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert result["schema"] == "mimo.kernels/1" and result["shape"] == [16, 256] and result["threads"] == 1
    for figures in result["formats"].values():
        assert list(figures) == ["1", "4", "8"]
        assert all(f["ms"] > 0 and f["gb_s"] > 0 and np.isfinite(f["checksum"]) for f in figures.values())
    bad = subprocess.run([sys.executable, str(script), "--shape", "16x100"], capture_output=True, text=True,
                         timeout=600)
    assert bad.returncode == 2 and "a multiple of 256" in bad.stderr
