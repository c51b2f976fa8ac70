"""Reinterpreting bits as floats inside numba code: the few LLVM casts the formats and kernels are built on."""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic


@intrinsic
def half_bits_to_float(typingctx, bits):  # pragma: no cover - compiled
    """float32 of the IEEE half whose bits are `bits` (uint16): one vcvtph2ps on CPUs with F16C."""
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


@intrinsic
def bits_to_float(typingctx, bits):  # pragma: no cover - compiled
    """float32 whose bits are `bits` (uint32)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@intrinsic
def double_bits(typingctx, value):  # pragma: no cover - compiled
    """The bits (uint64) of a float64."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.uint64(types.float64), codegen


@intrinsic
def bits_to_double(typingctx, bits):  # pragma: no cover - compiled
    """float64 whose bits are `bits` (uint64)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.uint64), codegen
