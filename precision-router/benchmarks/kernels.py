"""How fast each integer kernel multiplies: GB/s of weights read per product, per format and batch size.

    python precision-router/benchmarks/kernels.py --out precision-router/results/kernels.json

One weight shape for every format (896x4864 by default: qwen2.5-coder-0.5b's MLP down product, 2-4.5 MB, which stays
in the last-level cache, so that the figure is the kernel's arithmetic and not the memory's), random weights,
activations quantized once (`product_into`, as the fused decode step calls it), on `--threads` threads (default 1:
per core). Each figure is the median of `--calls` calls after one warm-up. The same weights give the same outputs
on every run, so `checksum` (the sum of the outputs) says whether a change to a kernel changed its numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from mimo_core.provenance import cpu_model
from precision_router.integer import INTEGER, quantize_activations
from precision_router.kernels import configure_threads, kernel_arrays
from precision_router.testing import random_packed

BATCHES = (1, 4, 8)


def measure(fmt: str, out_rows: int, n_in: int, batches: tuple[int, ...], calls: int) -> dict[str, dict]:
    """Per batch size: median milliseconds of one product, GB/s of weight bytes, microseconds per activation row,
    and the outputs' sum."""
    rng = np.random.default_rng(0)
    codes, scales = kernel_arrays(random_packed(fmt, out_rows, n_in, rng))
    nbytes = codes.nbytes + scales.nbytes
    product = INTEGER[fmt].product_into
    figures = {}
    for n in batches:
        a = quantize_activations(rng.standard_normal((n, n_in)).astype(np.float32))
        y = np.empty((n, out_rows), np.float32)
        seconds = []
        for _ in range(calls + 1):  # the first compiles or loads the kernel
            began = time.perf_counter()
            product(codes, scales, a.codes, a.scales, a.sums, y, 0)
            seconds.append(time.perf_counter() - began)
        median = statistics.median(seconds[1:])
        figures[str(n)] = {"ms": round(median * 1e3, 4), "gb_s": round(nbytes / median / 1e9, 2),
                           "us_per_row": round(median * 1e6 / n, 1), "checksum": float(y.astype(np.float64).sum())}
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="+", default=list(INTEGER), choices=list(INTEGER), metavar="FORMAT",
                        help=f"integer formats to time (default: all, {' '.join(INTEGER)})")
    parser.add_argument("--shape", default="896x4864", help="weight rows x columns (columns a multiple of 256)")
    parser.add_argument("--threads", type=int, default=1, help="the kernels' threads (default 1: per core)")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per figure (default 200)")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    try:
        out_rows, n_in = (int(v) for v in args.shape.split("x"))
        if n_in % 256 or out_rows < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--shape {args.shape!r}: ROWSxCOLUMNS, the columns a multiple of 256")
    configure_threads(args.threads)
    result = {"schema": "mimo.kernels/1", "cpu": cpu_model(), "threads": args.threads, "shape": [out_rows, n_in],
              "calls": args.calls, "load_average": round(os.getloadavg()[0], 2), "formats": {}}
    for fmt in args.formats:
        result["formats"][fmt] = figures = measure(fmt, out_rows, n_in, BATCHES, args.calls)
        print(fmt.ljust(6), "  ".join(f"batch {n}: {f['gb_s']:6.2f} GB/s {f['us_per_row']:7.1f} us/row"
                                      for n, f in figures.items()), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
