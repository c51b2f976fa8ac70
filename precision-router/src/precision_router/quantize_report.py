"""`quantize --model`: what each format does to each weight tensor of a GGUF: SQNR, max error, bits."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize as gguf_dequantize

from precision_router.formats import BLOCK, FORMATS, dequantize, quantize, sqnr_db


def tensor_report(values: np.ndarray, formats: tuple[str, ...] = FORMATS) -> dict[str, Any]:
    """Per format: SQNR (dB), max absolute error and bits per weight of `values` ([rows, cols]) in that format."""
    out = {}
    for fmt in formats:
        packed = quantize(values, fmt)
        back = dequantize(packed)
        ratio = sqnr_db(values, back)
        out[fmt] = {"sqnr_db": round(ratio, 2) if np.isfinite(ratio) else None,  # JSON has no Infinity: null = exact
                    "max_abs_error": float(np.abs(back - values).max()), "bits_per_weight": packed.bits_per_weight}
    return out


def quantize_gguf(path: Path, progress: Callable[[str], None] = lambda name: None) -> dict[str, Any]:
    """The report of every 2-d weight tensor of the GGUF at `path` (vectors and odd widths are skipped)."""
    tensors = {}
    for t in GGUFReader(path).tensors:
        if len(t.shape) != 2 or int(t.shape[0]) % BLOCK:
            continue
        progress(t.name)
        values = np.asarray(gguf_dequantize(t.data, t.tensor_type), dtype=np.float32)  # [out, in]
        tensors[t.name] = {"gguf_type": t.tensor_type.name, "shape": list(values.shape), **tensor_report(values)}
    return {"schema": "mimo.precision-quantize/1", "tensors": tensors}
