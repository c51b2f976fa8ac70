"""`mimo-engine bench`: prefill and decode speed of a model against this machine's memory-bandwidth roofline.

Decoding one token reads every weight once, so it can go no faster than bandwidth / weight bytes per token, the
bytes of the forms the precision policy reads (`--policy`; float32 reads 4 bytes a weight, q8_0 1.06, mxfp4 0.53):
that is the roofline single-stream decode is measured against. A batch of B sequences reads the weights once per
step for all B tokens, which is why batched decode should scale.

The bandwidth is measured in the same run as the decode timing, interleaved with it (one sample after each round of
batch sizes), so both see the same load: each sample is `mimo_core.profiles`' streaming read (a matrix-vector
product, on as many threads as the decode kernels) and copy over a buffer four times the last-level cache, and the
best sample counts. A decode faster than that roofline means the bandwidth was under-measured: the fraction is then
not published (null, with a note saying why), never a figure above 1.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np
from precision_router.integer import INTEGER, asm_instructions
from precision_router.kernels import kernel_arrays
from precision_router.testing import random_packed

from mimo_core.contract import Contract
from mimo_core.extensions import MimoRequest
from mimo_core.profiles import (CPU_CACHES, bandwidth_buffer_bytes, last_level_cache_bytes, measure_memory_bandwidth,
                                 measure_read_bandwidth, median_seconds)
from mimo_engine.runtime import BLOCK_SIZE, EngineCore, LoadedModel, Work
from mimo_engine.sampling import SamplingParams
from mimo_engine.config import DEFAULTS, STEP_TOKENS, EngineConfig, PrefillStall
from mimo_engine.costs import StepTiming
from mimo_engine.output import Delta
from mimo_engine.stream import Request
from mimo_engine.worker import ModelWorker
from mimo_engine.step import WeightPlan

BENCH_TEXT = (
    "The history of computing is a story of machines that learned to do arithmetic faster than people, and then "
    "of people who learned to ask those machines better questions. "
)
TARGET_FRACTION_OF_ROOFLINE = 0.6
TARGET_BATCH8_SPEEDUP = 4.0
BATCH_SIZES = (1, 4, 8)


@dataclass
class Bandwidth(Contract):
    """This machine's memory bandwidth as the bench measured it, and how."""

    read_gb_s: float  # the roofline's: the best sample of a streaming read
    copy_gb_s: float  # the best sample of an array copy, bytes read plus written
    samples: int
    buffer_bytes: int
    last_level_cache_bytes: int | None  # None: not readable here (the buffer is then FALLBACK_BUFFER_BYTES)
    threads: int  # of the read, as many as the decode kernels use
    method: str


BLAS_SETTLE_S = 0.5  # after a bandwidth sample: longer than OpenBLAS's workers spin (2^28 cycles, ~0.1 s) by default


class BandwidthSampler:
    """Samples of the memory bandwidth taken between decode timings, and the best of them."""

    def __init__(self, threads: int, caches: Path = CPU_CACHES) -> None:
        self.threads = threads
        self.llc_bytes = last_level_cache_bytes(caches)
        self.buffer_bytes = bandwidth_buffer_bytes(self.llc_bytes)
        self.reads: list[float] = []
        self.copies: list[float] = []

    def sample(self) -> None:
        """One sample of each: the read on `threads` BLAS threads (the engine keeps BLAS at one thread, which would
        measure a single core's share), then the copy."""
        self.reads.append(measure_read_bandwidth(self.buffer_bytes, self.threads))
        self.copies.append(measure_memory_bandwidth(self.buffer_bytes))
        # OpenBLAS's workers spin on after the read, and decode steps timed while they do run slower (qwen2.5-coder-0.5b
        # batch 1: 36 and 38 ms a step in two runs without this pause, 33 with it; 26-28 ms in a process that never
        # ran BLAS on two threads)
        time.sleep(BLAS_SETTLE_S)

    def result(self) -> Bandwidth:
        """The best samples (a pass can only be slowed down by other work, never sped up)."""
        return Bandwidth(
            read_gb_s=round(max(self.reads) / 1e9, 2), copy_gb_s=round(max(self.copies) / 1e9, 2),
            samples=len(self.reads), buffer_bytes=self.buffer_bytes, last_level_cache_bytes=self.llc_bytes,
            threads=self.threads,
            method=f"best of {len(self.reads)} samples taken between the decode timings, each the best of 5 passes "
                   f"over {self.buffer_bytes >> 20} MiB (read: float32 matrix-vector product on {self.threads} "
                   f"threads; copy: numpy array copy, counting bytes read and written)",
        )  # fmt: skip


def roofline_fraction(decode_tokens_per_s: float, roofline_tokens_per_s: float) -> tuple[float | None, str | None]:
    """Single-stream decode as a fraction of the memory roofline, and a note when it cannot be published: a decode
    faster than the roofline means the bandwidth was under-measured, so the fraction is None rather than above 1."""
    fraction = decode_tokens_per_s / roofline_tokens_per_s
    if fraction > 1.0:
        return None, (f"decode ran at {decode_tokens_per_s:g} tokens/s, {fraction:.2f}x the memory roofline of "
                      f"{roofline_tokens_per_s:g} tokens/s: the measurement is inconsistent (the bandwidth was "
                      f"under-measured), so no fraction of the roofline is given")
    return round(fraction, 3), None


def weight_bytes_per_token(model: LoadedModel, plan: WeightPlan) -> int:
    """Bytes of weights one decode step under `plan` reads: every block's matrices in the plan's formats and its
    vectors, the final norm and the lm_head (the embedding table: one row per token, negligible)."""
    vectors = sum(v.nbytes for layer in model.weights.layers
                  for v in (layer.attn_norm, layer.ffn_norm, layer.bqkv) if v is not None)
    return sum(model.plan_bytes(plan).values()) + vectors + model.weights.output_norm.nbytes


@dataclass
class DecodeFigures(Contract):
    """Decode speed at one batch size: the median step time and tokens per second over all sequences, and where a
    step's time goes (mean ms a step: the fused blocks, each layer group's weight products and the attention over
    the KV cache outside them, the rest: the embedding, the final norm, sampling's argmax, Python)."""

    step_ms: float
    tokens_per_s: float
    profile_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class BenchResult(Contract):
    """`mimo-engine bench`: prefill and decode speed of one model on this machine, against its roofline."""

    SCHEMA = "mimo.engine-bench/2"

    model: str
    policy: str
    cpu_count: int
    load_average: dict[str, float]  # before and after: other work on the cores skews every figure
    load_s: float
    prompt_tokens: int
    prefill_tokens_per_s: float
    decode: dict[str, DecodeFigures]  # by batch size
    bandwidth: Bandwidth
    weight_bytes_per_token: int
    bits_per_weight: float
    roofline_tokens_per_s: float
    decode_fraction_of_roofline: float | None  # None: inconsistent (above 1), `roofline_note` says why
    batch8_over_batch1: float
    targets: dict[str, float]
    roofline_note: str | None = None
    # format -> the widening multiply-adds found in its compiled integer kernel (vpmaddubsw and vpmaddwd on AVX2,
    # vpdpbusd with VNNI): which instructions the int8 path really runs on this CPU
    integer_instructions: dict[str, list[str]] = field(default_factory=dict)


def step_profile(read: dict, times: list[float]) -> dict[str, float]:
    """Mean ms a step in each part: the fused blocks, the weight products and the attention outside them (by layer
    group), and the rest."""
    parts: dict[str, float] = {}
    for (group, _), (_, _, seconds) in read.items():
        if not seconds:  # products that ran inside fused blocks (timed as the blocks), or no attention outside them
            continue
        name = {"attention": "attention", "fused": "fused blocks"}.get(group, f"{group} products")
        parts[name] = parts.get(name, 0.0) + seconds / len(times)
    parts["other"] = statistics.mean(times) - sum(parts.values())
    return {name: round(seconds * 1e3, 3) for name, seconds in parts.items()}


def integer_instructions(formats: set[str]) -> dict[str, list[str]]:
    """For each of `formats` that has integer kernels: the multiply-add instructions its product compiles to."""
    rng = np.random.default_rng(0)
    return {fmt: sorted(asm_instructions(fmt, *kernel_arrays(random_packed(fmt, 16, 256, rng))))
            for fmt in sorted(formats & set(INTEGER))}


def run_bench(
    name: str, cache_dir: Path, prompt_tokens: int = 128, decode_steps: int = 16, repeats: int = 5,
    policy: str = "native", threads: int | None = None,
) -> BenchResult:
    """Prefill tokens/s, decode tokens/s per batch size (medians), bandwidth (measured in the same run) and roofline
    of model `name` with its weights read under precision policy `policy` (a static one: the model holds only its
    formats), its kernels on `threads` threads (None: every core)."""
    load_average_before = os.getloadavg()[0]
    started = time.perf_counter()
    model = LoadedModel.load(name, cache_dir, policies=(policy,), threads=threads)
    load_s = time.perf_counter() - started
    bandwidth = BandwidthSampler(numba.get_num_threads())  # the decode kernels' threads, as the load set them
    plan = model.plan(model.policy(policy))
    prompt = model.tokenizer.encode(BENCH_TEXT * (prompt_tokens // 20 + 1))[:prompt_tokens]
    blocks_per_sequence = (prompt_tokens + decode_steps + 1) // BLOCK_SIZE + 2
    core = EngineCore(model, num_blocks=blocks_per_sequence * (max(BATCH_SIZES) + 1))

    def prefill_once() -> None:
        core.prefill("timed", prompt, reuse=False)
        core.free("timed")

    prefill_s = median_seconds(prefill_once, repeats)
    first = int(core.prefill("prompt", prompt, reuse=False)[-1].argmax())

    steps: dict[int, list[float]] = {batch: [] for batch in BATCH_SIZES}
    read: dict[int, dict] = {batch: {} for batch in BATCH_SIZES}  # each batch's (group, format) -> figures
    for _ in range(repeats):  # batch sizes interleaved, so that a noisy moment does not skew their ratio
        for batch in BATCH_SIZES:
            tokens = {(batch, i): first for i in range(batch)}
            for seq_id in tokens:
                core.fork("prompt", seq_id)  # the prompt's blocks are shared, as the n choices of a request share them
            for step in range(decode_steps + 1):  # step 0 is a warm-up, untimed (it copies the shared last block)
                t0 = time.perf_counter()
                for seq_id, token in tokens.items():
                    core.append(seq_id, [token])
                rows = core.step([Work(seq_id, 1) for seq_id in tokens], read[batch] if step else None)
                tokens = {seq_id: int(row[0].argmax()) for seq_id, row in zip(tokens, rows)}
                if step:
                    steps[batch].append(time.perf_counter() - t0)
            for seq_id in tokens:
                core.free(seq_id)
        bandwidth.sample()  # between the rounds: the bandwidth sees the load the decode timings saw
    decode = {str(batch): DecodeFigures(step_ms=round(statistics.median(times) * 1e3, 2),
                                        tokens_per_s=round(batch / statistics.median(times), 2),
                                        profile_ms=step_profile(read[batch], times))
              for batch, times in steps.items()}

    measured = bandwidth.result()
    bytes_per_token = weight_bytes_per_token(model, plan)
    roofline = measured.read_gb_s * 1e9 / bytes_per_token
    single = decode["1"].tokens_per_s
    fraction, note = roofline_fraction(single, round(roofline, 2))
    return BenchResult(
        model=name,
        policy=policy,
        cpu_count=os.cpu_count() or 1,
        load_average={"before": load_average_before, "after": os.getloadavg()[0]},
        load_s=round(load_s, 2),
        prompt_tokens=len(prompt),
        prefill_tokens_per_s=round(len(prompt) / prefill_s, 1),
        decode=decode,
        bandwidth=measured,
        weight_bytes_per_token=bytes_per_token,
        bits_per_weight=round(8 * sum(model.plan_bytes(plan).values()) / sum(model.group_weights().values()), 3),
        roofline_tokens_per_s=round(roofline, 2),
        decode_fraction_of_roofline=fraction,
        roofline_note=note,
        batch8_over_batch1=round(decode["8"].tokens_per_s / single, 2),
        integer_instructions=integer_instructions(
            {part for formats in model.plan_reads(plan)[0].values() for label in formats for part in label.split("+")}),
        targets={"decode_fraction_of_roofline": TARGET_FRACTION_OF_ROOFLINE,
                 "batch8_over_batch1": TARGET_BATCH8_SPEEDUP},
    )


GOAL_GAP_S = 0.3  # the goal on a running stream's worst gap while a long prompt is prefilled: 0.3 s, or
GOAL_GAP_USUAL = 10  # ten of its usual gaps, whichever is longer


@dataclass
class StepRecord(Contract):
    """A step that ran while the long prompt was prefilled: its decode tokens, the prompt tokens it carried and the
    position of the first (None: none), and its wall time."""

    decode_tokens: int
    prompt_tokens: int
    position: int | None
    ms: float


@dataclass
class InterferenceResult(Contract):
    """Running streams' inter-token gaps while a long prompt is prefilled beside them, against their usual gap; that
    prompt's time to first token; and the steps that ran meanwhile."""

    SCHEMA = "mimo.engine-interference/2"

    model: str
    streams: int
    long_prompt_tokens: int
    step_tokens: int
    prefill_stall: dict[str, float]  # the engine's PrefillStall: seconds (0: no time bound) and decode_steps
    load_average: dict[str, float]  # before and after: other work on the cores skews every figure
    itl_ms: dict[str, float]  # p50 / p99 / max of the streams' gaps while the long prompt was being prefilled
    itl_ms_idle: dict[str, float]  # the same over the 2 s before it arrived: p50 is the usual gap
    worst_gap_ratio: float  # the worst gap while it was prefilled, in usual gaps
    goal_ms: float  # what the worst gap should stay within: GOAL_GAP_S or GOAL_GAP_USUAL usual gaps, the longer
    long_prompt_ttft_s: float
    steps: list[StepRecord]


def run_interference(name: str, cache_dir: Path, streams: int = 4, long_prompt_tokens: int = 1500,
                     step_tokens: int = STEP_TOKENS, stall: PrefillStall = DEFAULTS.prefill_stall,
                     threads: int | None = None) -> InterferenceResult:
    """Decode `streams` sequences, let a `long_prompt_tokens` prompt arrive, and time the streams' tokens and the
    engine's steps."""
    load_average_before = os.getloadavg()[0]
    model = LoadedModel.load(name, cache_dir, threads=threads)
    timings: list[tuple[float, StepTiming]] = []  # (when it ended, the step)
    config = EngineConfig(max_batch_size=streams + 2, max_queue=0, step_tokens=step_tokens, prefill_stall=stall)
    worker = ModelWorker(model, config,
                         on_step=lambda timing: timings.append((time.perf_counter(), timing)))
    text = model.tokenizer.encode(BENCH_TEXT * (long_prompt_tokens // 20 + 2))
    if len(text) < long_prompt_tokens:
        raise ValueError(f"the bench text has {len(text)} tokens, fewer than {long_prompt_tokens}")
    stamps: list[list[float]] = [[] for _ in range(streams)]
    cache_off = MimoRequest.from_dict({"cache": {"enabled": False}})

    async def stream(index: int, request: Request) -> None:
        async for event in request.events():
            stamps[index].append(time.perf_counter())
            if not isinstance(event, Delta):
                return

    async def main() -> tuple[float, float]:
        # two short requests together first: a process's first product of two rows compiles its kernel (1.9 s,
        # measured on smollm2-135m), which would otherwise land on whichever step first has two logit rows
        warm = [Request(text[i : i + 40], SamplingParams(temperature=0, max_tokens=4), mimo=cache_off)
                for i in range(2)]
        for request in warm:
            worker.submit(request.engine)
        await asyncio.gather(*(r.result() for r in warm))
        running = [Request(text[i : i + 32], SamplingParams(temperature=0, max_tokens=10**6), mimo=cache_off)
                   for i in range(streams)]
        tasks = [asyncio.create_task(stream(i, r)) for i, r in enumerate(running)]
        for request in running:
            worker.submit(request.engine)
        await asyncio.sleep(3.0)  # the streams settle into steady decoding
        long = Request(text[:long_prompt_tokens], SamplingParams(temperature=0, max_tokens=1), mimo=cache_off)
        arrived = time.perf_counter()
        worker.submit(long.engine)
        await long.result()
        answered = time.perf_counter()
        for request, task in zip(running, tasks):
            request.cancel()  # a cancelled request gets no final event: stop listening too
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return arrived, answered

    try:
        arrived, answered = asyncio.run(main())
    finally:
        worker.close()

    def gaps(low: float, high: float) -> dict[str, float]:  # the gaps between tokens that overlap [low, high]
        ms = [1e3 * (b - a) for s in stamps for a, b in itertools.pairwise(s) if b >= low and a <= high]
        return {"p50": round(float(np.percentile(ms, 50)), 2), "p99": round(float(np.percentile(ms, 99)), 2),
                "max": round(max(ms), 2)}

    busy, idle = gaps(arrived, answered), gaps(arrived - 2.0, arrived)
    steps = [StepRecord(t.decode_tokens, t.prompt_tokens, t.chunks[0][1] if t.chunks else None,
                        round(t.seconds * 1e3, 2)) for ended, t in timings if arrived <= ended <= answered]
    return InterferenceResult(
        model=name, streams=streams, long_prompt_tokens=long_prompt_tokens, step_tokens=step_tokens,
        prefill_stall={"seconds": stall.seconds, "decode_steps": stall.decode_steps},
        load_average={"before": load_average_before, "after": os.getloadavg()[0]}, itl_ms=busy, itl_ms_idle=idle,
        worst_gap_ratio=round(busy["max"] / idle["p50"], 2),
        goal_ms=round(max(GOAL_GAP_S * 1e3, GOAL_GAP_USUAL * idle["p50"]), 2),
        long_prompt_ttft_s=round(answered - arrived, 3), steps=steps)
