"""The formats against their specs: exact grids, ties, saturation, specials, error bounds and packed sizes."""

import numpy as np
import pytest

from precision_router.formats import (
    BITS,
    E2M1,
    E4M3,
    E5M2,
    FORMATS,
    decode_table,
    dequantize,
    quantize,
    sqnr_db,
)

E2M1_VALUES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def roundtrip(values, fmt: str) -> np.ndarray:
    """Values padded to one block, quantized and read back."""
    row = np.zeros(32, dtype=np.float32)
    row[: len(values)] = values
    return dequantize(quantize(row, fmt))[0, : len(values)]


def test_every_e2m1_value_round_trips_exactly_at_every_sign_and_scale():
    grid = np.array(E2M1_VALUES + [-v for v in E2M1_VALUES[1:]], dtype=np.float32)
    np.testing.assert_array_equal(decode_table(E2M1)[:8], E2M1_VALUES)
    for scale in (2.0**-20, 0.25, 1.0, 64.0):
        x = grid * scale  # amax 6 * scale: the block's shared exponent is log2(scale)
        np.testing.assert_array_equal(roundtrip(x, "mxfp4"), x)


def test_mxfp4_ties_go_to_even_and_overflow_saturates():
    # amax 6 -> scale 1: 0.25 between 0 and 0.5 -> 0; 0.75 -> 1; 1.25 -> 1; 1.75 -> 2; 2.5 -> 2; 3.5 -> 4; 5 -> 4
    x = [6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -5.0, -0.25]
    np.testing.assert_array_equal(roundtrip(x, "mxfp4"), [6, 0, 1, 1, 2, 2, 4, 4, -4, -0.0])
    # amax 7.9: floor(log2) = 2, scale 1: 7.9 rounds to 8, past E2M1's 6, so it saturates
    np.testing.assert_array_equal(roundtrip([7.9, -7.0, 6.5], "mxfp4"), [6, -6, 6])
    assert np.signbit(roundtrip([6.0, -0.25], "mxfp4")[1])


def test_mx_scale_is_two_to_the_floor_log2_amax_minus_emax():
    for amax, fmt, exponent in ((1.0, "mxfp4", -2), (6.0, "mxfp4", 0), (7.99, "mxfp4", 0), (448.0, "mxfp8", 0),
                                (1.0, "mxfp8", -8), (1e-3, "mxfp8", -18)):
        p = quantize(np.full(32, amax, dtype=np.float32), fmt)
        assert int(p.scales[0, 0]) - 127 == exponent


def test_mx_specials_nan_inf_zero_and_subnormal_blocks():
    x = np.zeros((4, 32), dtype=np.float32)
    x[0, 3] = np.nan  # a block holding NaN reads back NaN, all of it (the E8M0 NaN scale)
    x[1, 5] = np.inf
    x[3, :] = 1e-40  # float32 subnormals: the scale is clamped at 2^-127, 2^-133 would be needed
    for fmt in ("mxfp4", "mxfp8"):
        p = quantize(x, fmt)
        assert p.scales[0, 0] == p.scales[1, 0] == 0xFF
        y = dequantize(p)
        assert np.isnan(y[:2]).all()
        assert p.scales[2, 0] == 0 and (y[2] == 0).all()  # an all-zero block: the smallest scale, zero elements
        assert p.scales[3, 0] == 0
    # 1e-40 / 2^-127 = 0.017: below E2M1's smallest 0.5, so zero; an E4M3 subnormal (9 * 2^-9), so kept roughly
    assert (dequantize(quantize(x[3], "mxfp4")) == 0).all()
    np.testing.assert_allclose(dequantize(quantize(x[3], "mxfp8")), x[3:4], rtol=2**-4)


def test_e4m3_hand_checked_ties_saturation_and_specials():
    x = np.array([232, 248, 240, 500, -1e6, np.inf, -np.inf, np.nan, 2.0**-9, 3 * 2.0**-10, 2.0**-11, -0.0],
                 dtype=np.float32)
    y = dequantize(quantize(x, "fp8_e4m3"))[0]
    expected = [224, 256, 240, 448, -448, 448, -448, np.nan, 2.0**-9, 2.0**-8, 0, -0.0]  # e4m3 has no inf
    np.testing.assert_array_equal(y, np.array(expected, dtype=np.float32))
    assert np.signbit(y[-1])
    assert decode_table(E4M3)[0x7E] == 448 and np.isnan(decode_table(E4M3)[0x7F])


def test_e5m2_hand_checked_ties_overflow_to_inf_and_subnormals():
    x = np.array([57344, 60000, 61440, np.inf, -np.inf, np.nan, 2.0**-16, 3 * 2.0**-17, 5.0], dtype=np.float32)
    y = dequantize(quantize(x, "fp8_e5m2"))[0]
    # 61440 is halfway from the max to the next binade's 65536: ties to even (the even code is 65536) -> inf
    expected = [57344, 57344, np.inf, np.inf, -np.inf, np.nan, 2.0**-16, 2.0**-15, 5.0]
    np.testing.assert_array_equal(y, np.array(expected, dtype=np.float32))
    assert decode_table(E5M2)[0x7C] == np.inf


def test_bf16_rounds_to_nearest_even_and_keeps_specials():
    one_ulp = np.float32(2.0**-7)
    x = np.array([1 + one_ulp / 2, 1 + 1.5 * one_ulp, 3.4e38, np.nan, -np.inf, -0.0, 1e-39], dtype=np.float32)
    y = dequantize(quantize(x, "bf16"))[0]
    assert y[0] == 1.0 and y[1] == 1 + 2 * one_ulp  # halfway: to the even mantissa, either way
    assert np.isinf(y[2]) and np.isnan(y[3]) and y[4] == -np.inf and np.signbit(y[5])
    assert y[6] != 0  # a float32 subnormal stays a bf16 subnormal


def test_q8_0_matches_ggml_and_reads_nan_blocks_as_nan():
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
    p = quantize(x, "q8_0")
    d = np.float32(1.0) / np.float32(127)
    assert p.scales.dtype == np.float16 and p.scales[0, 0] == np.float16(d)
    np.testing.assert_array_equal(p.codes[0, :3], np.sign(x[0, :3]) * np.floor(np.abs(x[0, :3]) / d + 0.5))
    x[0, 40] = np.nan
    assert np.isnan(dequantize(quantize(x, "q8_0"))[0, 32:]).all()
    assert not np.isnan(dequantize(quantize(x, "q8_0"))[0, :32]).any()


@pytest.mark.parametrize("fmt", FORMATS)
def test_packed_size_is_the_stated_bits_and_random_data_meets_its_error_bound(fmt):
    x = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    p = quantize(x, fmt)
    assert p.nbytes * 8 == BITS[fmt] * x.size
    assert p.bits_per_weight == BITS[fmt]
    # relative error per element: half an ulp of the element mantissa (2^-m-1); block formats relative to amax
    bound = {"f32": 0, "bf16": 2**-8, "fp8_e4m3": 2**-4, "fp8_e5m2": 2**-3}
    y = dequantize(p)
    if fmt in bound:
        assert (np.abs(y - x) <= bound[fmt] * np.abs(x) + 2**-9 * (fmt == "fp8_e4m3")).all()
    else:  # relative to the block's amax: q8_0 half a step of amax/127 plus the float16 scale's rounding; MX the
        # clamp at the element's max (amax / scale lies in [2^emax, 2^(emax+1)), past 448 or 6): up to 1/8 and 1/4,
        # and half a step of the top binade below it (1/16 of amax for E4M3, 1/4 for E2M1)
        amax = np.abs(x.reshape(64, 8, 32)).max(axis=-1, keepdims=True)
        step = {"q8_0": amax / 254 + amax * 2**-11, "mxfp8": amax / 8, "mxfp4": amax / 4}[fmt]
        assert (np.abs(y - x).reshape(64, 8, 32) <= step * (1 + 1e-6)).all()
    assert sqnr_db(x, y) > {"f32": 1e9, "bf16": 50, "q8_0": 40, "mxfp8": 28, "fp8_e4m3": 28, "fp8_e5m2": 22,
                            "mxfp4": 16}[fmt]


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="multiple of the block"):
        quantize(np.zeros((2, 33), dtype=np.float32), "mxfp4")
    with pytest.raises(ValueError, match="unknown format"):
        quantize(np.zeros((2, 32), dtype=np.float32), "fp3")
