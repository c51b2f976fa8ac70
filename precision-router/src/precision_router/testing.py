"""Random weights of every format, for the tests of the kernels and of the forward passes that read them."""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from precision_router.formats import REGISTRY, Packed, gguf_blocks, quantize

# the byte offsets of each GGUF block type's float16 fields: (d, m or None)
HALVES = {"q4_0": (0, None), "q4_1": (0, 2), "q5_0": (0, None), "q5_1": (0, 2), "q4_k": (0, 2), "q6_k": (208, None)}


def random_packed(fmt: str, rows: int, cols: int, rng: np.random.Generator) -> Packed:
    """A [rows, cols] weight of `fmt`: quantized from random floats, or (GGUF's own blocks, which nothing here
    quantizes) random bytes with sane float16 scales."""
    if REGISTRY[fmt].quantize_rows:
        return quantize(rng.standard_normal((rows, cols)).astype(np.float32) * 0.1, fmt)
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[fmt.upper()]]
    raw = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    for at in HALVES[fmt]:
        if at is not None:
            halves = (rng.random((rows, cols // block)) * 0.01 + 0.001).astype(np.float16)
            raw[..., at : at + 2] = halves.view(np.uint8).reshape(rows, cols // block, 2)
    return gguf_blocks(fmt, raw.reshape(rows, -1), cols)
