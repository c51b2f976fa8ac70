"""y = x @ W on int8 activations: integer dot products over the weights' own integer codes, as llama.cpp computes.

Each activation row is quantized once per product to int8 in blocks of 32 (one float scale per block, as Q8_0 is,
and each block's sum of codes times its scale). A weight row is a sequence of groups of 32 int8 codes, one group per
activation block, each with a float scale (two for Q6_K, one per 16) and, for the formats with a minimum, a float
bias (the types whose codes are stored offset, Q4_0's code - 8 and Q5_0's code - 16, load them as stored, unsigned,
with a bias of -8 d or -16 d: a third faster than signed codes, measured); a group's contribution is

    scale_w * scale_x * sum(q_w * q_x)  +  bias_w * (scale_x * sum(q_x))

with the sum of products in int32. Each format says in a few lines of LLVM IR how one group's codes load as a
vector from the bytes it stores (`_load_*`, after ggml's reference dequantizers) and where its scale is (`_scale_*`,
read in the loop beside the group's codes; `_scales_*`, numba, decode a whole row's for the float decoder). The
product is an LLVM vector loop (`_row_dot`) with eight float lanes accumulating the scaled group sums (a scalar
running sum would wait on every group's addition), decoding each weight group once for up to four activation rows
(eight with AVX-512's registers, `WIDE`).
On AVX2 a group's products are one `vpmaddubsw` and one `vpmaddwd`, with AVX512-VNNI one `vpdpbusd` (signed codes
as magnitudes against sign-carrying activations, `vpsignb`, as llama.cpp does); elsewhere LLVM lowers a generic
widening multiply-add. `asm_instructions` says which instructions a kernel compiled to;
`precision-router/benchmarks/kernels.py` how fast each format runs.

Formats: `q8_0`, `mxfp4` (E2M1 times 2 is the integers 0, 1, 2, 3, 4, 6, 8, 12 and their negatives; the E8M0 scale,
halved, is the group scale, exactly) and GGUF's own blocks `q4_0`, `q4_1`, `q5_0`, `q5_1`, `q4_k` (6-bit scales and
minimums in super-blocks of 256) and `q6_k`. Float order is strict inside the loop, so that a row's result never
depends on how many rows share the call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from precision_router.bits import bits_to_float, half_bits_to_float, own_cache_files, stable
from precision_router.formats import E2M1, decode_table

BLOCK = 32  # activations per int8 block (Q8_0's)
SUPER_BLOCK = 256  # weights per K-quant super-block
_ROW_TILE = 16  # weight rows per parallel task
I8, I32, F32 = ir.IntType(8), ir.IntType(32), ir.FloatType()
_FEATURES = llvm.get_host_cpu_features()  # numba compiles for the host CPU
AVX2 = bool(_FEATURES.get("avx2"))
VNNI = AVX2 and bool(_FEATURES.get("avx512vnni") and _FEATURES.get("avx512vl"))  # vpdpbusd on 256-bit vectors
# Eight activation rows per decoded weight group where AVX-512's 32 vector registers hold their sums (AVX2's 16 hold
# four): at batch 8, 9-27% faster than four for every format but Q4_K (23-58% slower: its super-block's scales and
# minimums want the registers). Two threads, 896x4864, the two alternated in one process, the same bits.
WIDE = AVX2 and bool(_FEATURES.get("avx512f") and _FEATURES.get("avx512vl"))
MXFP4_DOUBLED = [int(2 * value) for value in decode_table(E2M1)]  # 0, 1, 2, 3, 4, 6, 8, 12, then negated


def _stable(name: str, obj):
    return stable(f"integer.{name}", obj)


# ---------------------------------------------------------------- activations


@numba.njit(cache=True)  # no fastmath: it would assume away the NaN check, and a NaN must read NaN, never a number
def quantize_rows(x, xq, xd, xsum):  # pragma: no cover - compiled
    """xq [N, in] int8, xd [N, in/32] float32 scales and xsum [N, in/32] float32 sums (codes times scale) of the
    rows of x [N, in]."""
    for r in range(x.shape[0]):
        for b in range(x.shape[1] // BLOCK):
            amax = np.float32(0.0)
            finite = True
            for j in range(BLOCK):
                v = abs(x[r, b * BLOCK + j])
                finite &= v < np.inf  # False for inf and NaN
                amax = max(amax, v)
            d = amax / np.float32(127.0)
            inverse = np.float32(127.0) / amax if finite and amax > 0 else np.float32(0.0)
            total = 0
            for j in range(BLOCK):
                # a NaN made 0 before the conversion, which must never see one: LLVM may convert ahead of a
                # branch, and a NaN converted is undefined (it once let the finiteness check be optimised away)
                scaled = x[r, b * BLOCK + j] * inverse
                q = np.int8(np.rint(scaled if scaled == scaled else np.float32(0.0)))
                xq[r, b * BLOCK + j] = q
                total += q
            xd[r, b] = d if finite else np.float32(np.nan)  # the block reads NaN, so its row does
            xsum[r, b] = xd[r, b] * np.float32(total)  # once here, not once per weight row


@dataclass(frozen=True)
class Activations:
    """A batch of activation rows quantized for the integer kernels."""

    codes: np.ndarray  # [N, in] int8
    scales: np.ndarray  # [N, in/32] float32
    sums: np.ndarray  # [N, in/32] float32: each block's sum of codes times its scale, for the weights' minimums


def quantize_activations(x: np.ndarray) -> Activations:
    """x [N, in] float32 (in a multiple of 32) as int8 blocks of 32."""
    n, n_in = x.shape
    out = Activations(np.empty((n, n_in), np.int8), np.empty((n, n_in // BLOCK), np.float32),
                      np.empty((n, n_in // BLOCK), np.float32))
    quantize_rows(x, out.codes, out.scales, out.sums)
    return out


# ---------------------------------------------------------------- a group's codes as an LLVM vector


class Vectors:
    """The few vector operations the code loaders are written in, over one IR builder."""

    def __init__(self, builder: ir.IRBuilder, base: ir.Value) -> None:
        self.b, self.base = builder, base  # base: an i8* to the row's first stored byte

    def intrinsic(self, name: str, result: ir.Type, *operands: ir.Value) -> ir.Value:
        """A call of the LLVM intrinsic `name` (declared in the module on first use)."""
        module = self.b.module
        declared = module.globals.get(name) or ir.Function(module, ir.FunctionType(result, [o.type for o in operands]),
                                                           name)
        return self.b.call(declared, operands)

    def const(self, value: int, lanes: int, width: ir.IntType = I8) -> ir.Constant:
        return ir.Constant(ir.VectorType(width, lanes), [value] * lanes)

    def splat(self, value: ir.Value, lanes: int) -> ir.Value:
        """`value` (a scalar of the vector's element type) in every lane."""
        vector = ir.VectorType(value.type, lanes)
        one = self.b.insert_element(ir.Constant(vector, None), value, ir.Constant(I32, 0))
        return self.b.shuffle_vector(one, ir.Constant(vector, None), ir.Constant(ir.VectorType(I32, lanes), None))

    def load(self, offset: ir.Value, lanes: int, width: ir.IntType = I8) -> ir.Value:
        """`lanes` values of `width` at byte `offset` of the row."""
        pointer = self.b.bitcast(self.b.gep(self.base, [offset]), ir.VectorType(width, lanes).as_pointer())
        return self.b.load(pointer, align=1)

    def low(self, v: ir.Value) -> ir.Value:
        return self.b.and_(v, self.const(15, v.type.count))

    def high(self, v: ir.Value) -> ir.Value:
        return self.b.lshr(v, self.const(4, v.type.count))

    def join(self, first: ir.Value, second: ir.Value) -> ir.Value:
        """The lanes of `first`, then those of `second`."""
        n = first.type.count
        return self.b.shuffle_vector(first, second, ir.Constant(ir.VectorType(I32, 2 * n), list(range(2 * n))))

    def interleave(self, even: ir.Value, odd: ir.Value) -> ir.Value:
        n = even.type.count
        lanes = [j // 2 + (n if j % 2 else 0) for j in range(2 * n)]
        return self.b.shuffle_vector(even, odd, ir.Constant(ir.VectorType(I32, 2 * n), lanes))

    def minus(self, v: ir.Value, value: int) -> ir.Value:
        return self.b.sub(v, self.const(value, v.type.count))

    def fifth_bits(self, offset: ir.Value) -> ir.Value:
        """The 32 bits at `offset` as lanes: lane j 16 where bit j is set (Q5's high bit of weight j), else 0. Byte
        j // 8 spread over its 8 lanes and tested against bit j % 8 (byte shuffles and compares, where per-lane shifts
        of 32-bit lanes would take four times the registers)."""
        b = self.b
        spread = b.shuffle_vector(self.load(offset, 4), ir.Constant(ir.VectorType(I8, 4), None),
                                  ir.Constant(ir.VectorType(I32, 32), [j // 8 for j in range(32)]))
        bit = ir.Constant(ir.VectorType(I8, 32), [1 << (j % 8) for j in range(32)])
        return b.select(b.icmp_unsigned("!=", b.and_(spread, bit), self.const(0, 32)), self.const(16, 32),
                        self.const(0, 32))


def _i64(v: Vectors, value: int) -> ir.Constant:
    return ir.Constant(ir.IntType(64), value)


def _load_q8_0(v: Vectors, g: ir.Value) -> ir.Value:
    return v.load(v.b.mul(g, _i64(v, 32)), 32)


def _load_mxfp4(v: Vectors, g: ir.Value) -> ir.Value:
    pairs = v.load(v.b.mul(g, _i64(v, 16)), 16)  # byte j: weight 2j in the low nibble, 2j + 1 in the high
    codes = v.interleave(v.low(pairs), v.high(pairs))
    if AVX2:  # one byte shuffle looks the 32 codes up in the 16 values (within each 128-bit half, so twice over)
        return v.intrinsic("llvm.x86.avx2.pshuf.b", codes.type, ir.Constant(codes.type, MXFP4_DOUBLED * 2), codes)
    b = v.b
    e = b.lshr(b.and_(codes, v.const(7, 32)), v.const(1, 32))
    m = b.and_(codes, v.const(1, 32))
    # E2M1 times 2: m when the exponent is 0, else (2 + m) << (e - 1)
    normal = b.shl(b.add(m, v.const(2, 32)), b.sub(b.select(b.icmp_unsigned("==", e, v.const(0, 32)),
                                                            v.const(1, 32), e), v.const(1, 32)))
    magnitude = b.select(b.icmp_unsigned("==", e, v.const(0, 32)), m, normal)
    negative = b.icmp_unsigned("!=", b.and_(codes, v.const(8, 32)), v.const(0, 32))
    return b.select(negative, b.sub(v.const(0, 32), magnitude), magnitude)


def _nibbles(v: Vectors, offset: ir.Value) -> ir.Value:
    """GGUF's 32 four-bit codes of a block: 16 bytes, the low nibbles weights 0-15, the high 16-31."""
    packed = v.load(offset, 16)
    return v.join(v.low(packed), v.high(packed))


def _load_q4_0(v: Vectors, g: ir.Value) -> ir.Value:  # 18 bytes: d, 16 of nibbles; a weight is d * (code - 8)
    return _nibbles(v, v.b.add(v.b.mul(g, _i64(v, 18)), _i64(v, 2)))


def _load_q4_1(v: Vectors, g: ir.Value) -> ir.Value:  # 20 bytes: d, m, 16 of nibbles; a weight is d * code + m
    return _nibbles(v, v.b.add(v.b.mul(g, _i64(v, 20)), _i64(v, 4)))


def _load_q5_0(v: Vectors, g: ir.Value) -> ir.Value:  # 22 bytes: d, 32 fifth bits, 16 of nibbles; d * (code - 16)
    at = v.b.mul(g, _i64(v, 22))
    return v.b.or_(_nibbles(v, v.b.add(at, _i64(v, 6))), v.fifth_bits(v.b.add(at, _i64(v, 2))))


def _load_q5_1(v: Vectors, g: ir.Value) -> ir.Value:  # 24 bytes: d, m, 32 fifth bits, 16 of nibbles
    at = v.b.mul(g, _i64(v, 24))
    return v.b.or_(_nibbles(v, v.b.add(at, _i64(v, 8))), v.fifth_bits(v.b.add(at, _i64(v, 4))))


def _load_q4_k(v: Vectors, s: ir.Value, j: int) -> ir.Value:
    # 144 bytes per 256 weights: d, dmin, 12 of scales, then 32 bytes per 64 weights (low nibbles the first 32)
    packed = v.load(v.b.add(v.b.mul(s, _i64(v, 144)), _i64(v, 16 + 32 * (j // 2))), 32)
    return v.low(v.high(packed) if j % 2 else packed)


def _load_q6_k(v: Vectors, s: ir.Value, j: int) -> ir.Value:
    # 210 bytes per 256 weights: 128 of low nibbles, 64 of 2-bit highs, 16 int8 scales (one per 16 weights), d. Per
    # half of 128 weights, weight l + 32 k (l < 32) is nibble (k >> 1) of ql[l + 32 (k & 1)] and bits 2k of qh[l],
    # minus 32: group j of 32 is quarter k of its half, whose 32 bytes of ql and of qh are contiguous.
    b = v.b
    half, k = divmod(j, 4)
    base = b.mul(s, _i64(v, 210))
    ql = v.load(b.add(base, _i64(v, 64 * half + 32 * (k % 2))), 32)
    qh = v.load(b.add(base, _i64(v, 128 + 32 * half)), 32)
    low = v.low(v.high(ql) if k >= 2 else ql)
    high = b.and_(b.lshr(qh, v.const(2 * k, 32)) if k else qh, v.const(3, 32))
    return v.minus(b.or_(low, b.shl(high, v.const(4, 32))), 32)


# ---------------------------------------------------------------- a group's scale (and bias) as LLVM scalars
# load_scale(row, scales, *at) -> (scale, bias or None): `row` the row's stored bytes, `scales` an i8* / i16* to the
# row's separate scales (where the format has them), `at` what the format's code loader takes (`_each_group`).


def _half_at(b: ir.IRBuilder, pointer: ir.Value) -> ir.Value:
    """The IEEE half at an i16* as float."""
    return b.fpext(b.bitcast(b.load(pointer, align=1), ir.HalfType()), F32)


def _row_half(row: Vectors, at: ir.Value) -> ir.Value:
    """The IEEE half at byte `at` of the row, as float."""
    return _half_at(row.b, row.b.bitcast(row.b.gep(row.base, [at]), ir.IntType(16).as_pointer()))


def _scale_q8_0(row: Vectors, scales: ir.Value, g: ir.Value) -> tuple:  # a float16 array beside the codes
    return _half_at(row.b, row.b.gep(scales, [g])), None


def _scale_mxfp4(row: Vectors, scales: ir.Value, g: ir.Value) -> tuple:  # E8M0 bytes beside the codes
    b = row.b
    code = b.zext(b.load(b.gep(scales, [g])), I32)
    power = b.bitcast(b.shl(code, ir.Constant(I32, 23)), F32)  # 2^(code - 127) for codes 1-254
    power = b.select(b.icmp_unsigned("==", code, ir.Constant(I32, 0)), ir.Constant(F32, 2.0**-127), power)
    power = b.select(b.icmp_unsigned("==", code, ir.Constant(I32, 0xFF)), ir.Constant(F32, float("nan")), power)
    return b.fmul(power, ir.Constant(F32, 0.5)), None  # halved: the codes are E2M1 doubled


def _scale_d(size: int, offset: int | None) -> Callable:
    """The scale d at the start of each GGUF block of `size` bytes, and the bias: the minimum m stored after it, or
    for the types whose codes are stored plus `offset`, -offset * d (exact: a power of two)."""

    def load_scale(row: Vectors, scales: ir.Value, g: ir.Value) -> tuple:
        b = row.b
        at = b.mul(g, _i64(row, size))
        d = _row_half(row, at)
        if offset is not None:
            return d, b.fmul(d, ir.Constant(F32, -float(offset)))
        return d, _row_half(row, b.add(at, _i64(row, 2)))

    return load_scale


def _byte_at(row: Vectors, at: ir.Value) -> ir.Value:
    """The row's byte at `at`, zero-extended to i32."""
    return row.b.zext(row.b.load(row.b.gep(row.base, [at])), I32)


def _scale_q4_k(row: Vectors, scales: ir.Value, s: ir.Value, j: int) -> tuple:
    # super-block s's d, dmin and the 6-bit scale and minimum of its group j, packed in 12 bytes from byte 4; read
    # here, beside the group's codes (a pass over a row's scales before its codes, strided by 144 bytes, made a
    # product from memory 1.7x slower than from cache, measured)
    b = row.b
    at = b.mul(s, _i64(row, 144))

    def byte(k: int) -> ir.Value:
        return _byte_at(row, b.add(at, _i64(row, k)))

    def bits(value: ir.Value, shift: int, mask: int) -> ir.Value:
        return b.and_(b.lshr(value, ir.Constant(I32, shift)) if shift else value, ir.Constant(I32, mask))

    if j < 4:
        sc, m = bits(byte(4 + j), 0, 63), bits(byte(8 + j), 0, 63)
    else:
        sc = b.or_(bits(byte(8 + j), 0, 15), b.shl(bits(byte(j), 6, 3), ir.Constant(I32, 4)))
        m = b.or_(bits(byte(8 + j), 4, 15), b.shl(bits(byte(4 + j), 6, 3), ir.Constant(I32, 4)))
    d, dmin = (_row_half(row, b.add(at, _i64(row, k))) for k in (0, 2))
    return b.fmul(d, b.uitofp(sc, F32)), b.fmul(b.fneg(dmin), b.uitofp(m, F32))


def _scale_q6_k(row: Vectors, scales: ir.Value, s: ir.Value, j: int) -> tuple:
    # super-block s's d times the int8 scales of the halves of its group j (bytes 192 + 2j and 193 + 2j), as the
    # group's 8 lanes take them: 4 per half
    b = row.b
    at = b.mul(s, _i64(row, 210))
    d = _row_half(row, b.add(at, _i64(row, 208)))
    pair = [b.fmul(d, b.sitofp(b.load(b.gep(row.base, [b.add(at, _i64(row, 192 + 2 * j + half))])), F32))
            for half in (0, 1)]
    vector = b.insert_element(b.insert_element(ir.Constant(ir.VectorType(F32, 2), None), pair[0],
                                               ir.Constant(I32, 0)), pair[1], ir.Constant(I32, 1))
    lanes = ir.Constant(ir.VectorType(I32, 8), [0, 0, 0, 0, 1, 1, 1, 1])
    return b.shuffle_vector(vector, ir.Constant(ir.VectorType(F32, 2), None), lanes), None


# ---------------------------------------------------------------- the row loop and the unpacking, as intrinsics


def _each_group(row: Vectors, groups: int, count: ir.Value, body: Callable) -> None:
    """body(g, at) for the groups g < count of a row in order, `at` where a format's loaders find the group: (g,),
    or for the K-quants (`groups` > 1 a super-block) (super-block, j), the super-block's groups unrolled so that
    their offsets and shifts are constants (variable byte shifts made Q6_K's loop three times as long)."""
    b = row.b
    with cgutils.for_range(b, b.udiv(count, _i64(row, groups))) as loop:
        for j in range(groups):
            g = b.add(b.mul(loop.index, _i64(row, groups)), _i64(row, j))
            body(g, (loop.index, j) if groups > 1 else (g,))


def _row_dot(load: Callable, load_scale: Callable, rows: int, unsigned: bool = False, groups: int = 1):
    """An intrinsic: for each of `rows` activation rows r, the sum over groups g < count of
    scale_g * x_scale[r, g] * sum_j(q_w[g, j] * q_x[r, G g + j]) (plus, where `load_scale` gives a bias,
    bias_g * x_sum[r, g], the block's scaled sum of codes): q_w the codes `load` reads from `codes` at flat byte
    offset i (one weight row, decoded once per group for all the rows), scale_g and bias_g what `load_scale` reads
    (from the row, or from `scales` at element offset si); activation row r's codes from element offset
    k + r * stride, its scales and scaled sums from kb + r * blocks. Returns a float32, or a tuple of `rows`.
    On AVX2, groups of 32 take one unsigned-by-signed byte multiply-add (vpmaddubsw) and one vpmaddwd for the
    group's 8 lanes, where sign-extending both sides to 16 bits takes five instructions (with AVX512-VNNI, one
    vpdpbusd): `unsigned` codes (0-127) as they are, signed ones as their magnitudes against the activations
    carrying their signs (vpsignb), as llama.cpp does."""
    group = BLOCK  # codes a loop iteration loads: one activation block's
    bytewise = AVX2

    @intrinsic
    def row_dot(typingctx, codes, i, scales, si, xq, k, stride, xd, xsum, kb, blocks, count):  # pragma: no cover
        if not (isinstance(xq, types.Array) and xq.dtype == types.int8 and xd.dtype == types.float32):
            return None
        result = types.float32 if rows == 1 else types.UniTuple(types.float32, rows)

        def codegen(context, builder, signature, args):
            data = [context.make_array(t)(context, builder, value).data if isinstance(t, types.Array) else value
                    for t, value in zip(signature.args, args)]
            codes_data, i, scales_data, si, xq_data, k, stride, xd_data, xsum_data, kb, blocks, count = data
            lanes = ir.VectorType(F32, 8)
            wide = ir.VectorType(I32, group)
            row = Vectors(builder, builder.gep(builder.bitcast(codes_data, I8.as_pointer()), [i]))
            activations = [Vectors(builder, builder.gep(xq_data, [builder.add(k, builder.mul(stride, _i64(row, r)))]))
                           for r in range(rows)]
            block_starts = [builder.add(kb, builder.mul(blocks, _i64(row, r))) for r in range(rows)]
            row_scales = builder.gep(scales_data, [si])
            accs = [cgutils.alloca_once_value(builder, ir.Constant(lanes, None)) for _ in range(rows)]
            offsets = [cgutils.alloca_once_value(builder, ir.Constant(F32, 0.0)) for _ in range(rows)]

            def pick(vector, chosen):
                chosen = list(chosen)
                return builder.shuffle_vector(vector, vector, ir.Constant(ir.VectorType(I32, len(chosen)), chosen))

            def multiply_add(slot, a, b):
                # slot += a * b as one fused multiply-add, rounded once: left to LLVM, whether a multiply and an add
                # fuse follows the fast-math of the function this loop is inlined into, which differs between a
                # product called alone and inside a fused block (their logits differed in the last bit)
                value = builder.load(slot)
                builder.store(row.intrinsic(f"llvm.fma.{'v8f32' if isinstance(value.type, ir.VectorType) else 'f32'}",
                                            value.type, a, b, value), slot)

            def accumulate(g, at):  # group g's products with every activation row, into their sums
                codes = load(row, *at)
                weights = None if bytewise else builder.sext(codes, wide)
                magnitudes = codes if unsigned or not bytewise else row.intrinsic("llvm.abs.v32i8", codes.type, codes,
                                                                        ir.Constant(ir.IntType(1), 0))
                w_scale, w_bias = load_scale(row, row_scales, *at)
                for activation, start, acc, offset in zip(activations, block_starts, accs, offsets):
                    x = activation.load(builder.mul(g, _i64(row, group)), group)
                    if bytewise:
                        if not unsigned:  # |w| times x with w's sign: the same products, the weight side unsigned
                            x = row.intrinsic("llvm.x86.avx2.psign.b", codes.type, x, codes)
                        if VNNI:  # the four products of each lane summed into it in one instruction
                            sums = row.intrinsic("llvm.x86.avx512.vpdpbusd.256", ir.VectorType(I32, 8),
                                                 ir.Constant(ir.VectorType(I32, 8), None), magnitudes, x)
                        else:
                            pairs = row.intrinsic("llvm.x86.avx2.pmadd.ub.sw", ir.VectorType(ir.IntType(16), 16),
                                                  magnitudes, x)
                            sums = row.intrinsic("llvm.x86.avx2.pmadd.wd", ir.VectorType(I32, 8), pairs,
                                                 ir.Constant(ir.VectorType(ir.IntType(16), 16), [1] * 16))
                    else:
                        products = builder.mul(weights, builder.sext(x, wide))
                        # adjacent pairs (a widening multiply-add's shape) down to 8 lanes, each the sum of 4 weights
                        # in order, as vpmaddubsw and vpmaddwd give them: a group's halves stay apart
                        sums = products
                        while sums.type.count > 8:
                            n = sums.type.count
                            sums = builder.add(pick(sums, range(0, n, 2)), pick(sums, range(1, n, 2)))
                    block = builder.add(start, g)  # group g is activation block g
                    x_scale = builder.load(builder.gep(xd_data, [block]))
                    if isinstance(w_scale.type, ir.VectorType):  # a scale per half of the group
                        weight = builder.fmul(w_scale, row.splat(x_scale, 8))
                    else:
                        weight = row.splat(builder.fmul(w_scale, x_scale), 8)
                    multiply_add(acc, builder.sitofp(sums, lanes), weight)
                    if w_bias is not None:  # the minimum times the block's sum of activation codes
                        multiply_add(offset, w_bias, builder.load(builder.gep(xsum_data, [block])))

            _each_group(row, groups, count, accumulate)
            name = "llvm.vector.reduce.fadd.v8f32"
            reduce = builder.module.globals.get(name) or ir.Function(
                builder.module, ir.FunctionType(F32, [F32, lanes]), name)
            # strict float order throughout (no fast-math flags): a row's result must not depend on how many rows
            # share the call, or a verified draft and a plain decode would disagree on greedy tokens
            totals = [builder.call(reduce, [builder.load(offset), builder.load(acc)])
                      for acc, offset in zip(accs, offsets)]
            return totals[0] if rows == 1 else context.make_tuple(builder, signature.return_type, totals)

        return result(codes, i, scales, si, xq, k, stride, xd, xsum, kb, blocks, count), codegen

    return row_dot


def _unpack(load: Callable, groups: int):
    """An intrinsic: the int8 codes of `count` groups of 32, read by `load` from `codes` at flat byte offset i,
    into `out` (int8, from its start)."""
    group = BLOCK

    @intrinsic
    def unpack(typingctx, codes, i, out, count):  # pragma: no cover - compiled
        if not (isinstance(out, types.Array) and out.dtype == types.int8):
            return None

        def codegen(context, builder, signature, args):
            codes_data = context.make_array(signature.args[0])(context, builder, args[0]).data
            out_data = context.make_array(signature.args[2])(context, builder, args[2]).data
            row = Vectors(builder, builder.gep(builder.bitcast(codes_data, I8.as_pointer()), [args[1]]))

            def store(g, at):
                target = builder.gep(out_data, [builder.mul(g, _i64(row, group))])
                builder.store(load(row, *at), builder.bitcast(target, ir.VectorType(I8, group).as_pointer()), align=1)

            _each_group(row, groups, args[3], store)
            return context.get_dummy_value()

        return types.none(codes, i, out, count), codegen

    return unpack


# ---------------------------------------------------------------- each group's scale and bias (scalar, per row)


@numba.njit(inline="always")
def _half(codes, o, at):  # pragma: no cover - compiled
    """The IEEE half at byte `at` of row o (little-endian), as float32."""
    return half_bits_to_float(np.uint16(np.uint16(codes[o, at]) | (np.uint16(codes[o, at + 1]) << np.uint16(8))))


@numba.njit(inline="always")
def _scales_q8_0(codes, scales, o, scale, bias):  # pragma: no cover - compiled
    for g in range(scale.shape[0]):
        scale[g] = half_bits_to_float(scales[o, g])


@numba.njit(inline="always")
def _scales_mxfp4(codes, scales, o, scale, bias):  # pragma: no cover - compiled
    for g in range(scale.shape[0]):  # E8M0 2^(code - 127), halved since the codes are doubled; 0xFF is NaN
        code = scales[o, g]
        scale[g] = np.float32(np.nan) if code == 0xFF else (
            bits_to_float(np.uint32(code) << np.uint32(23)) * np.float32(0.5) if code > 0 else np.float32(2.0**-128))


def _scales_d(size: int, offset: int | None):
    """The scales and biases of a GGUF block type of `size` bytes per 32 that starts with d (and m): `_scale_d`'s."""
    stored_minimum = offset is None
    negated = np.float32(-(offset or 0))

    @numba.njit(inline="always")
    def scales_d(codes, scales, o, scale, bias):  # pragma: no cover - compiled
        for g in range(scale.shape[0]):
            scale[g] = _half(codes, o, size * g)
            bias[g] = _half(codes, o, size * g + 2) if stored_minimum else scale[g] * negated

    return _stable(f"scales_d:{size}:{offset}", scales_d)


@numba.njit(inline="always")
def _scales_q4_k(codes, scales, o, scale, bias):  # pragma: no cover - compiled
    for s in range(scale.shape[0] // 8):  # 8 groups of 32 a super-block: 6-bit scales and minimums in 12 bytes
        at = 144 * s
        d, dmin = _half(codes, o, at), _half(codes, o, at + 2)
        for j in range(8):
            if j < 4:
                sc, m = codes[o, at + 4 + j] & 63, codes[o, at + 8 + j] & 63
            else:
                sc = (codes[o, at + 8 + j] & 15) | ((codes[o, at + j] >> 6) << 4)
                m = (codes[o, at + 8 + j] >> 4) | ((codes[o, at + 4 + j] >> 6) << 4)
            scale[8 * s + j] = d * np.float32(sc)
            bias[8 * s + j] = -dmin * np.float32(m)


@numba.njit(inline="always")
def _scales_q6_k(codes, scales, o, scale, bias):  # pragma: no cover - compiled
    for s in range(scale.shape[0] // 16):  # 16 groups of 16 a super-block: int8 scales at byte 192, d at 208
        d = _half(codes, o, 210 * s + 208)
        for g in range(16):
            scale[16 * s + g] = d * np.float32(np.int8(codes[o, 210 * s + 192 + g]))


for _name in ("_half", "_scales_q8_0", "_scales_mxfp4", "_scales_q4_k", "_scales_q6_k"):  # named in the kernels
    _stable(_name, globals()[_name])


# ---------------------------------------------------------------- the kernels of one format


def _kernels(fmt: str, load: Callable, load_scale: Callable, read_scales: Callable, scale_width: int,
             unsigned: bool, groups: int):
    """The integer product and the float row decoder of a format whose groups of 32 codes (`unsigned`: 0-127)
    `load` reads, `groups` at a time (8 for the K-quants' super-blocks of 256, else 1), with scales (and biases)
    that `load_scale` reads beside them, one per `scale_width` weights (32, or 16 for Q6_K), or `read_scales`
    reads for a whole row (the float decoder's)."""
    unpack = _stable(f"{fmt}:unpack", _unpack(load, groups))
    # one weight row against every activation row: eight (`wide`) or four at a time, then one at a time (the row's
    # codes are decoded once per call, so the rows of a call share each decoding)
    one, four, eight = (_stable(f"{fmt}:row_dot:{rows}", _row_dot(load, load_scale, rows, unsigned, groups))
                        for rows in (1, 4, 8))
    wide = WIDE and fmt != "q4_k"

    @numba.njit(parallel=True, cache=True, nogil=True)
    @own_cache_files(f"{fmt}:product_into")
    def product_into(codes, scales, xq, xd, xsum, y, first):  # pragma: no cover - compiled
        """y[N, first + o] = row o of W . the quantized rows (xq [N, in], xd and xsum [N, in/32]), every o."""
        n, n_in = xq.shape
        blocks = n_in // BLOCK
        row_bytes = codes.shape[1] * codes.itemsize
        n_out = codes.shape[0]
        for tile in prange((n_out + _ROW_TILE - 1) // _ROW_TILE):
            for o in range(tile * _ROW_TILE, min(n_out, (tile + 1) * _ROW_TILE)):
                si = o * scales.shape[1]  # the row's separate scales, where the format has them
                r = 0
                while wide and r + 8 <= n:
                    (y[r, first + o], y[r + 1, first + o], y[r + 2, first + o], y[r + 3, first + o],
                     y[r + 4, first + o], y[r + 5, first + o], y[r + 6, first + o], y[r + 7, first + o]) = eight(
                        codes, o * row_bytes, scales, si, xq, r * n_in, n_in, xd, xsum, r * blocks, blocks, blocks)
                    r += 8
                while r + 4 <= n:
                    y[r, first + o], y[r + 1, first + o], y[r + 2, first + o], y[r + 3, first + o] = four(
                        codes, o * row_bytes, scales, si, xq, r * n_in, n_in, xd, xsum, r * blocks, blocks, blocks)
                    r += 4
                while r < n:
                    y[r, first + o] = one(codes, o * row_bytes, scales, si, xq, r * n_in, n_in, xd, xsum,
                                          r * blocks, blocks, blocks)
                    r += 1

    product_into = _stable(f"{fmt}:product_into", product_into)

    @numba.njit(cache=True, nogil=True)
    @own_cache_files(f"{fmt}:product")
    def product(codes, scales, x, y):  # pragma: no cover - compiled
        """y[N, out] = x @ W.T, x [N, in] float32 quantized here (one call: each Python-side call cost ~3 us)."""
        n, n_in = x.shape
        xq = np.empty((n, n_in), dtype=np.int8)
        xd = np.empty((n, n_in // BLOCK), dtype=np.float32)
        xsum = np.empty((n, n_in // BLOCK), dtype=np.float32)
        quantize_rows(x, xq, xd, xsum)
        product_into(codes, scales, xq, xd, xsum, y, 0)

    @numba.njit(parallel=True, cache=True, nogil=True)
    @own_cache_files(f"{fmt}:decode_rows")
    def decode_rows(codes, scales, start, out):  # pragma: no cover - compiled
        """out[r] = row start + r of W, as float32."""
        n_in = out.shape[1]
        row_bytes = codes.shape[1] * codes.itemsize
        for r in prange(out.shape[0]):
            q = np.empty(n_in, dtype=np.int8)
            scale = np.empty(n_in // scale_width, dtype=np.float32)
            bias = np.zeros(n_in // scale_width, dtype=np.float32)
            read_scales(codes, scales, start + r, scale, bias)
            unpack(codes, (start + r) * row_bytes, q, n_in // BLOCK)
            for k in range(n_in):
                out[r, k] = np.float32(q[k]) * scale[k // scale_width] + bias[k // scale_width]

    return product, product_into, decode_rows


@dataclass(frozen=True)
class IntegerKernels:
    """A format's integer product (batches below BLAS's), the same on activations already quantized (the fused
    decode step's), and its float row decoder (BLAS tiles)."""

    product: Callable
    product_into: Callable  # (codes, scales, xq, xd, xsum, y, first column of y)
    decode_rows: Callable
    scale_width: int  # weights per scale


INTEGER = {fmt: IntegerKernels(*_kernels(fmt, load, load_scale, read_scales, width, unsigned, groups), width)
           for fmt, load, load_scale, read_scales, width, unsigned, groups in (
               ("q8_0", _load_q8_0, _scale_q8_0, _scales_q8_0, 32, False, 1),
               ("mxfp4", _load_mxfp4, _scale_mxfp4, _scales_mxfp4, 32, False, 1),
               ("q4_0", _load_q4_0, _scale_d(18, 8), _scales_d(18, 8), 32, True, 1),
               ("q4_1", _load_q4_1, _scale_d(20, None), _scales_d(20, None), 32, True, 1),
               ("q5_0", _load_q5_0, _scale_d(22, 16), _scales_d(22, 16), 32, True, 1),
               ("q5_1", _load_q5_1, _scale_d(24, None), _scales_d(24, None), 32, True, 1),
               ("q4_k", _load_q4_k, _scale_q4_k, _scales_q4_k, 32, True, SUPER_BLOCK // BLOCK),
               ("q6_k", _load_q6_k, _scale_q6_k, _scales_q6_k, 16, False, SUPER_BLOCK // BLOCK))}


def asm_instructions(fmt: str, codes: np.ndarray, scales: np.ndarray,
                     mnemonics: tuple[str, ...] = ("vpdpbusd", "vpdpwssd", "vpmaddubsw", "vpmaddwd")) -> set[str]:
    """Which of the integer multiply-add `mnemonics` the product of `fmt` compiles to for weight arrays of the types of
    `codes` and `scales` (`kernels.kernel_arrays` of a weight; compiled again, uncached: numba shows no assembly of
    code it loaded from its cache; about 2 s a format)."""
    fresh = numba.njit(parallel=True, nogil=True)(INTEGER[fmt].product_into.py_func)
    f32 = types.float32[:, ::1]
    fresh.compile((numba.typeof(codes), numba.typeof(scales), types.int8[:, ::1], f32, f32, f32,
                   types.int64))  # the loop is product_into's, on int8 activations
    return {m for m in mnemonics if m in fresh.inspect_asm(fresh.signatures[0])}
