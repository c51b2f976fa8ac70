"""Weight formats, bit-exact from their specs: quantize a float32 matrix to a packed form, and dequantize it back.

A matrix [rows, cols] is quantized along its last axis (a weight's input axis, as GGUF stores it [out, in]), so the
blocks of 32 that share a scale run along the inputs every output row reads.

- `mxfp4`, `mxfp8`: OCP Microscaling v1.0. Each block of 32 shares one E8M0 scale 2^(floor(log2(amax)) - emax),
  emax the element format's largest exponent (2 for E2M1, 8 for E4M3); elements are x / scale rounded to nearest
  even and clamped to the element's largest normal. A block holding NaN or inf gets the NaN scale (0xFF), so the
  whole block reads back NaN; a scale below 2^-127 is clamped there, and an all-zero block gets that scale and zero
  elements. MXFP4 packs two E2M1 codes per byte, the first element in the low nibble: 4 + 8/32 = 4.25 bits.
- `fp8_e4m3`: plain element cast, saturating (overflow and inf to +-448, NaN to NaN: E4M3 has no inf).
- `fp8_e5m2`: plain element cast, IEEE-like (max 57344; overflow past the rounding boundary and inf to inf).
- `bf16`: the top half of float32, rounded to nearest even; NaN stays a (quiet) NaN.
- `q8_0`: GGUF's Q8_0, one float16 scale d = amax / 127 per 32 and int8 codes round(x / d) (halves away from zero,
  as ggml rounds): 8.5 bits. A block holding NaN or inf gets a NaN scale.
- `f32`: the matrix itself.
- `q4_0`, `q4_1`, `q5_0`, `q5_1`, `q4_k`, `q6_k`: GGUF's own blocks, read from a model file as they are (each row
  its ggml blocks, bytes as the file stores them) and never quantized here: a GGUF's weights run at their own
  precision and their own bytes.

Subnormal inputs are values like any other: they round to the element grid (in MX, after the scale has been
clamped, most flush to zero, as the spec's clamped scale implies).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from precision_router.bits import bits_to_double, double_bits

BLOCK = 32  # weights per shared scale (MX and Q8_0)
ROWS_PER_CHUNK = 4096  # rows quantized at once: bounds the float64 temporaries of a large matrix


@dataclass(frozen=True)
class Minifloat:
    """A small IEEE-like float: its exponent and mantissa widths, bias, largest finite value, and specials."""

    exp_bits: int
    man_bits: int
    max_value: float
    has_inf: bool  # IEEE-like: overflow rounds to inf; otherwise every overflow saturates to max_value
    nan_code: int | None  # the positive NaN code, if any

    @property
    def bias(self) -> int:
        return (1 << (self.exp_bits - 1)) - 1

    @property
    def emin(self) -> int:
        """The exponent of the smallest normal value; subnormals share its quantum."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """The exponent of the largest finite value (what MX subtracts from a block's exponent)."""
        return int(np.floor(np.log2(self.max_value)))


E2M1 = Minifloat(2, 1, 6.0, has_inf=False, nan_code=None)
E4M3 = Minifloat(4, 3, 448.0, has_inf=False, nan_code=0x7F)
E5M2 = Minifloat(5, 2, 57344.0, has_inf=True, nan_code=0x7E)
ELEMENTS = {"mxfp4": E2M1, "mxfp8": E4M3, "fp8_e4m3": E4M3, "fp8_e5m2": E5M2}


@dataclass(frozen=True)
class Packed:
    """A quantized matrix [rows, cols]: its codes, its per-block scales (None for element casts), and its format."""

    fmt: str
    shape: tuple[int, int]
    codes: np.ndarray  # mxfp4: uint8 [rows, cols/2]; fp8, mxfp8: uint8 [rows, cols]; bf16: uint16; q8_0: int8; f32;
    #                    GGUF blocks: uint8 [rows, bytes per row]
    scales: np.ndarray | None = None  # mx: uint8 E8M0 [rows, cols/32]; q8_0: float16 [rows, cols/32]

    @property
    def size(self) -> int:
        """Number of weights."""
        return self.shape[0] * self.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes the packed form occupies: what a kernel reads to use it once."""
        return self.codes.nbytes + (0 if self.scales is None else self.scales.nbytes)

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per weight, scales included."""
        return 8 * self.nbytes / self.size


@dataclass(frozen=True)
class Stacked:
    """Packed matrices of different formats stacked along the rows, as one weight: a fused product (q, k and v)
    whose parts a GGUF stores in different types, each read in its own."""

    parts: tuple[Packed, ...]

    @property
    def fmt(self) -> str:
        """The parts' formats, joined: q5_0+q8_0."""
        return "+".join(sorted({p.fmt for p in self.parts}))

    @property
    def shape(self) -> tuple[int, int]:
        return sum(p.shape[0] for p in self.parts), self.parts[0].shape[1]

    @property
    def size(self) -> int:
        return sum(p.size for p in self.parts)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)


# ---------------------------------------------------------------- element casts


@numba.njit(inline="always")
def _pow2(e):  # pragma: no cover - compiled
    """2.0^e for a normal float64 exponent, built from its bits."""
    return bits_to_double(np.uint64(1023 + e) << np.uint64(52))


@numba.njit(inline="always")
def _exponent(a):  # pragma: no cover - compiled
    """floor(log2 a) of a positive normal float64, from its bits."""
    return np.int64((double_bits(a) >> np.uint64(52)) & np.uint64(0x7FF)) - 1023


@numba.njit(cache=True)
def _code(x, exp_bits, man_bits, max_value, has_inf, nan_code):  # pragma: no cover - compiled
    """The code of float64 `x` in a minifloat: rounded to nearest even, overflow to inf (has_inf) or saturated."""
    bias = (1 << (exp_bits - 1)) - 1
    emin = 1 - bias
    sign = np.int64(double_bits(x) >> np.uint64(63)) << (exp_bits + man_bits)
    a = abs(x)
    if a != a:
        return sign | nan_code
    if a == np.inf:
        a = np.inf if has_inf else max_value
    if a < np.inf:
        e = max(_exponent(a) if a > 0 else emin, emin) - man_bits  # the quantum's exponent (subnormals: emin's)
        a = np.rint(a * _pow2(-e)) * _pow2(e)  # halves to even; both products are exact (powers of two)
        if a > max_value:
            a = np.inf if has_inf else max_value
    if a == np.inf:
        return sign | (((1 << exp_bits) - 1) << man_bits)
    if a < _pow2(emin):
        return sign | np.int64(a * _pow2(man_bits - emin))
    e = _exponent(a)
    return sign | ((e + bias) << man_bits) | np.int64(a * _pow2(man_bits - e) - (1 << man_bits))


@numba.njit(parallel=True, cache=True)
def _encode_rows(x, shift, exp_bits, man_bits, max_value, has_inf, nan_code, out):  # pragma: no cover - compiled
    """out[r, c] = code of x[r, c] * 2^-shift[r, c // 32] (shift 0 for plain casts)."""
    for r in numba.prange(x.shape[0]):
        for c in range(x.shape[1]):
            v = np.float64(x[r, c]) * _pow2(-shift[r, c // BLOCK])
            out[r, c] = _code(v, exp_bits, man_bits, max_value, has_inf, nan_code)


def encode(x: np.ndarray, fmt: Minifloat, shift: np.ndarray | None = None) -> np.ndarray:
    """uint8 codes of the [rows, cols] float32 `x` (times 2^-shift per block of 32, if given) in `fmt`."""
    rows, cols = x.shape
    if shift is None:
        shift = np.zeros((rows, -(-cols // BLOCK)), dtype=np.int64)
    out = np.empty((rows, cols), dtype=np.uint8)
    _encode_rows(np.ascontiguousarray(x, dtype=np.float32), shift, fmt.exp_bits, fmt.man_bits, fmt.max_value,
                 fmt.has_inf, -1 if fmt.nan_code is None else fmt.nan_code, out)
    return out


def decode_table(fmt: Minifloat) -> np.ndarray:
    """float32 value of every code of `fmt` (2^(1 + exp_bits + man_bits) entries)."""
    width = 1 + fmt.exp_bits + fmt.man_bits
    codes = np.arange(1 << width)
    sign = np.where(codes >> (width - 1), -1.0, 1.0)
    exponent = (codes >> fmt.man_bits) & ((1 << fmt.exp_bits) - 1)
    mantissa = codes & ((1 << fmt.man_bits) - 1)
    value = np.where(exponent == 0, np.ldexp(mantissa.astype(float), fmt.emin - fmt.man_bits),
                     np.ldexp(1.0 + mantissa / (1 << fmt.man_bits), exponent - fmt.bias))
    magnitude = codes & ((1 << (width - 1)) - 1)
    if fmt.has_inf:
        value = np.where(exponent == (1 << fmt.exp_bits) - 1, np.where(mantissa == 0, np.inf, np.nan), value)
    elif fmt.nan_code is not None:
        value = np.where(magnitude == fmt.nan_code, np.nan, value)
    return (sign * value).astype(np.float32)


# ---------------------------------------------------------------- block formats


def _blocks(x: np.ndarray) -> np.ndarray:
    """[rows, cols] as [rows, cols/32, 32]; cols must be a multiple of the block."""
    rows, cols = x.shape
    if cols % BLOCK:
        raise ValueError(f"{cols} columns are not a multiple of the block size {BLOCK}")
    return x.reshape(rows, cols // BLOCK, BLOCK)


def mx_scale_exponents(blocks: np.ndarray, element: Minifloat) -> np.ndarray:
    """Each block's shared exponent floor(log2(amax)) - emax, clamped to E8M0's [-127, 127]; NaN for a block holding
    NaN or inf, or whose exponent is past 127."""
    amax = np.abs(blocks).max(axis=-1)  # NaN propagates
    _, k = np.frexp(np.where(np.isfinite(amax) & (amax > 0), amax, 1.0))
    shared = np.where(amax > 0, k - 1 - element.emax, -127).astype(np.float64)
    shared = np.maximum(shared, -127.0)
    return np.where(np.isfinite(amax) & (shared <= 127), shared, np.nan)


def quantize_mx(x: np.ndarray, fmt: str) -> Packed:
    """MX block quantization (module docstring) of a [rows, cols] matrix."""
    element = ELEMENTS[fmt]
    blocks = _blocks(x)  # [rows, nb, 32]
    shared = mx_scale_exponents(blocks, element)  # [rows, nb]
    scale_codes = np.where(np.isnan(shared), 0xFF, np.nan_to_num(shared) + 127).astype(np.uint8)
    finite = np.where(np.isfinite(x), x, 0)  # a block holding NaN or inf reads NaN through its scale
    codes = encode(finite, element, np.nan_to_num(shared).astype(np.int64))  # saturates at the largest normal
    if fmt == "mxfp4":
        codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return Packed(fmt, x.shape, codes, scale_codes)


def e8m0_values(codes: np.ndarray) -> np.ndarray:
    """float32 value of E8M0 scale codes: 2^(code - 127), 0xFF NaN (2^-127 is a float32 subnormal, exactly)."""
    return np.where(codes == 0xFF, np.nan, np.ldexp(1.0, codes.astype(np.int64) - 127)).astype(np.float32)


def quantize_q8_0(x: np.ndarray) -> Packed:
    """GGUF Q8_0 of a [rows, cols] matrix, as ggml's reference quantizer computes it."""
    blocks = _blocks(x)  # float32, as ggml computes
    amax = np.abs(blocks).max(axis=-1)  # [rows, nb]
    d = amax / np.float32(127)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(d > 0, np.float32(1) / d, np.float32(0))[..., None]
        scaled = np.where(np.isfinite(d)[..., None], blocks * inv, 0.0)
    codes = (np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5))).astype(np.int8)  # roundf
    scales = np.where(np.isfinite(amax), d, np.nan).astype(np.float16)
    return Packed("q8_0", x.shape, codes.reshape(x.shape), scales)


def quantize_bf16(x: np.ndarray) -> Packed:
    """bfloat16 bits of a float32 matrix, rounded to nearest even."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16
    quiet_nan = (bits >> 16) | 0x0040
    return Packed("bf16", x.shape, np.where(np.isnan(x), quiet_nan, rounded).astype(np.uint16))


def _quantize_rows(x: np.ndarray, fmt: str) -> Packed:
    if fmt not in FORMATS:
        hint = " (GGUF's own blocks are read from a model file, not quantized here)" if fmt in REGISTRY else ""
        raise ValueError(f"unknown format {fmt!r}{hint}; formats: {', '.join(FORMATS)}")
    return REGISTRY[fmt].quantize_rows(x)


def quantize(x: np.ndarray, fmt: str) -> Packed:
    """`x` (a [rows, cols] matrix, or a vector as one row) in format `fmt`, blocks along the last axis."""
    x = np.asarray(x, dtype=np.float32)
    matrix = x.reshape(1, -1) if x.ndim == 1 else x
    if matrix.ndim != 2:
        raise ValueError(f"quantize takes a vector or a matrix, not a {x.ndim}-d array")
    parts = [_quantize_rows(matrix[i : i + ROWS_PER_CHUNK], fmt) for i in range(0, max(len(matrix), 1),
                                                                                 ROWS_PER_CHUNK)]
    scales = None if parts[0].scales is None else np.concatenate([p.scales for p in parts])
    return Packed(fmt, matrix.shape, np.concatenate([p.codes for p in parts]), scales)


def dequantize(p: Packed) -> np.ndarray:
    """The float32 [rows, cols] matrix a packed form stands for."""
    if p.fmt not in REGISTRY:
        raise ValueError(f"unknown format {p.fmt!r}")
    return REGISTRY[p.fmt].dequantize(p)


def _dequantize_q8_0(p: Packed) -> np.ndarray:
    rows, cols = p.shape
    blocks = p.codes.reshape(rows, cols // BLOCK, BLOCK).astype(np.float32)
    return (blocks * p.scales.astype(np.float32)[..., None]).reshape(rows, cols)


def _dequantize_mx(p: Packed) -> np.ndarray:
    rows, cols = p.shape
    codes = p.codes
    if p.fmt == "mxfp4":
        codes = np.stack([codes & 0x0F, codes >> 4], axis=-1).reshape(rows, cols)
    values = decode_table(ELEMENTS[p.fmt])[codes].reshape(rows, cols // BLOCK, BLOCK)
    return (values * e8m0_values(p.scales)[..., None]).reshape(rows, cols)


def _cast(fmt: str) -> Callable[[np.ndarray], Packed]:
    return lambda x: Packed(fmt, x.shape, encode(x, ELEMENTS[fmt]))


def gguf_blocks(fmt: str, blocks: np.ndarray, cols: int) -> Packed:
    """GGUF tensor rows (uint8 [rows, bytes per row], as the file stores them) as a packed matrix of `fmt`."""
    return Packed(fmt, (blocks.shape[0], cols), np.ascontiguousarray(blocks, dtype=np.uint8))


def _gguf(name: str) -> Format:
    """The format of GGUF's block type `name` (upper case in the file: Q4_K)."""
    qtype = GGMLQuantizationType[name.upper()]
    block, size = GGML_QUANT_SIZES[qtype]
    return Format(name, 8 * size / block, None,
                  lambda p: np.asarray(gguf_dequantize(p.codes, qtype), dtype=np.float32).reshape(p.shape),
                  gguf_type=qtype.name)


@dataclass(frozen=True)
class Format:
    """A weight format: its bits per weight, how rows are quantized and read back, whether a precision policy may
    read it (the engine then holds every weight in it when asked), the names deployments give it, and the GGUF
    tensor type it holds as it is."""

    name: str
    bits: float
    quantize_rows: Callable[[np.ndarray], Packed] | None  # None: read from GGUF files only
    dequantize: Callable[[Packed], np.ndarray]
    policy: bool = False  # whether a precision policy may read every weight in it
    aliases: tuple[str, ...] = ()
    gguf_type: str | None = None  # the GGUF tensor type held as it is in this format


# Every format, once: the quantizer's and the reports' list (those with a quantizer), the bits the router and the
# cost model count, the policies (`policy.STATIC`) the engine loads and route chooses from, and the deployment names
# MIMO_PRECISION_MODELS accepts all derive from it. A new format is one entry here (plus its kernel: a code loader
# and a scale reader in integer.py, or a float kernel in kernels.py).
REGISTRY: dict[str, Format] = {f.name: f for f in (
    Format("f32", 32.0, lambda x: Packed("f32", x.shape, np.array(x, dtype=np.float32)), lambda p: p.codes, True),
    Format("bf16", 16.0, quantize_bf16, lambda p: (p.codes.astype(np.uint32) << 16).view(np.float32), True),
    Format("q8_0", 8.5, quantize_q8_0, _dequantize_q8_0, True, gguf_type="Q8_0"),
    Format("mxfp8", 8.25, lambda x: quantize_mx(x, "mxfp8"), _dequantize_mx, True),
    Format("fp8_e4m3", 8.0, _cast("fp8_e4m3"), lambda p: decode_table(E4M3)[p.codes], aliases=("fp8",)),
    Format("fp8_e5m2", 8.0, _cast("fp8_e5m2"), lambda p: decode_table(E5M2)[p.codes]),
    Format("mxfp4", 4.25, lambda x: quantize_mx(x, "mxfp4"), _dequantize_mx, True, aliases=("fp4",)),
    *(_gguf(name) for name in ("q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q6_k")),
)}
FORMATS = tuple(name for name, f in REGISTRY.items() if f.quantize_rows)  # what `quantize` makes
GGUF_FORMATS = {f.gguf_type: name for name, f in REGISTRY.items() if f.gguf_type}  # GGUF type -> the format it is
BITS = {name: f.bits for name, f in REGISTRY.items()}
ALIASES = {alias: name for name, f in REGISTRY.items() for alias in f.aliases}  # how deployments are usually named
POLICY_FORMATS = tuple(name for name, f in REGISTRY.items() if f.policy)


def sqnr_db(x: np.ndarray, y: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of `y` against `x`, in dB (inf when equal)."""
    noise = float(np.sum((np.asarray(x, np.float64) - y) ** 2))
    signal = float(np.sum(np.asarray(x, np.float64) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(signal / noise) if signal else float("-inf")
