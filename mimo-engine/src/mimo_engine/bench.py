"""`mimo-engine bench`: prefill and decode speed of a model against this machine's memory-bandwidth roofline.

Decoding one token reads every weight once, so with float32 weights it can go no faster than
bandwidth / weight bytes per token: that is the roofline single-stream decode is measured against. A batch of B
sequences reads the weights once per step for all B tokens, which is why batched decode should scale.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from mimo_core.profiles import measure_memory_bandwidth, measure_read_bandwidth, median_seconds
from mimo_engine.runtime import LoadedModel

BENCH_TEXT = (
    "The history of computing is a story of machines that learned to do arithmetic faster than people, and then "
    "of people who learned to ask those machines better questions. "
)
BANDWIDTH_BUFFER_BYTES = 512 << 20  # far larger than any CPU cache, so every pass streams from DRAM
TARGET_FRACTION_OF_ROOFLINE = 0.9
TARGET_BATCH8_SPEEDUP = 4.0
BATCH_SIZES = (1, 4, 8)


def measure_bandwidth() -> dict[str, float]:
    """This machine's memory bandwidth in GB/s on a buffer far larger than the caches: `read` (the roofline's) and
    `copy` (bytes read plus written)."""
    return {
        "read": measure_read_bandwidth(BANDWIDTH_BUFFER_BYTES) / 1e9,
        "copy": measure_memory_bandwidth(BANDWIDTH_BUFFER_BYTES) / 1e9,
    }


def weight_bytes_per_token(model: LoadedModel) -> int:
    """Bytes of weights one decode step reads: every block's matrices and vectors, the final norm and the lm_head."""
    w = model.weights
    per_layer = sum(a.nbytes for layer in w.layers for a in vars(layer).values() if a is not None)
    return per_layer + w.output_norm.nbytes + w.lm_head.nbytes  # the embedding table: one row per token, negligible


def run_bench(
    name: str, cache_dir: Path | None = None, prompt_tokens: int = 128, decode_steps: int = 16, repeats: int = 5
) -> dict:
    """Prefill tokens/s, decode tokens/s per batch size (medians), bandwidth and fp32 roofline of model `name`."""
    load_average_before = os.getloadavg()[0]  # other work on the cores skews every figure: say how busy they were
    started = time.perf_counter()
    model = LoadedModel.load(name, cache_dir)
    load_s = time.perf_counter() - started
    prompt = model.tokenizer.encode(BENCH_TEXT * (prompt_tokens // 20 + 1))[:prompt_tokens]

    prefill_s = median_seconds(lambda: model.prefill(prompt, model.new_cache(), last_only=True), repeats)
    prefilled = model.new_cache()
    first = int(model.prefill(prompt, prefilled, last_only=True)[-1].argmax())

    steps: dict[int, list[float]] = {batch: [] for batch in BATCH_SIZES}
    for _ in range(repeats):  # batch sizes interleaved, so that a noisy moment does not skew their ratio
        for batch in BATCH_SIZES:
            caches = [prefilled.fork() for _ in range(batch)]
            tokens = [first] * batch
            model.decode(tokens, caches)  # warm-up step, untimed
            for _ in range(decode_steps):
                t0 = time.perf_counter()
                tokens = model.decode(tokens, caches).argmax(axis=-1).tolist()
                steps[batch].append(time.perf_counter() - t0)
    decode = {}
    for batch, times in steps.items():
        step_s = statistics.median(times)
        decode[str(batch)] = {"step_ms": round(step_s * 1e3, 2), "tokens_per_s": round(batch / step_s, 2)}

    bandwidth = measure_bandwidth()
    bytes_per_token = weight_bytes_per_token(model)
    roofline = bandwidth["read"] * 1e9 / bytes_per_token
    single = decode["1"]["tokens_per_s"]
    return {
        "model": name,
        "cpu_count": os.cpu_count(),
        "load_average": {"before": load_average_before, "after": os.getloadavg()[0]},
        "load_s": round(load_s, 2),
        "prompt_tokens": len(prompt),
        "prefill_tokens_per_s": round(len(prompt) / prefill_s, 1),
        "decode": decode,
        "bandwidth_gb_s": {k: round(v, 2) for k, v in bandwidth.items()},
        "fp32_weight_bytes_per_token": bytes_per_token,
        "roofline_tokens_per_s": round(roofline, 2),
        "decode_fraction_of_roofline": round(single / roofline, 3),
        "batch8_over_batch1": round(decode["8"]["tokens_per_s"] / single, 2),
        "targets": {"decode_fraction_of_roofline": TARGET_FRACTION_OF_ROOFLINE, "batch8_over_batch1": TARGET_BATCH8_SPEEDUP},
    }
