"""Reinterpreting bits as floats inside numba code: the few LLVM casts the formats and kernels are built on; and
the fixed identities that let kernels made in factories be found in numba's disk cache."""

from __future__ import annotations

import re

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


def own_cache_files(name: str):
    """A decorator to put under `numba.njit(cache=True)` for a kernel made in a factory: its cache files become its
    own. Kernels of one factory share a qualified name, hence one cache index, and numba adds an entry to an index
    by reading it, numbering its data file, and writing both back: two processes compiling two of them at once can
    number theirs alike and leave the index naming the other's code, which then runs silently where the argument
    types agree (CI ran a fused block whose kernels were another format's: all NaN, and never here)."""
    def rename(function):
        function.__qualname__ = f"{function.__qualname__}_{re.sub(r'[^0-9A-Za-z]', '_', name)}"
        return function

    return rename


def stable(name: str, obj):
    """`obj` (a numba dispatcher or intrinsic) with the fixed identity `name`. A cached kernel made in a factory is
    found again in numba's disk cache only if its closure pickles to the same bytes in every process, and these
    objects (and those their code names) pickle with a random uuid unless one is set: without it every process
    compiled each format's kernels anew (1.4-2.2 s each, measured)."""
    obj._set_uuid(f"precision_router:{name}")
    return obj


for _name in ("half_bits_to_float", "bits_to_float", "double_bits", "bits_to_double"):
    stable(f"bits.{_name}", globals()[_name])
