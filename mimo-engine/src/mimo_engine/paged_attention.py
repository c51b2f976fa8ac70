"""Attention over KV blocks: a step's query rows read their sequences' keys and values where they lie in the pool.

Two paths, chosen per sequence. A sequence with few new rows this step that are not its prompt's (a decode token, a
drafted block) goes through `paged_attention_rows`, a numba kernel that walks its slots in the pool directly, with
an online softmax, so nothing is gathered, its (row, kv head) tasks spread over the kernels' threads (in a fused
decode step it would otherwise leave the other core idle between two products). Measured on smollm2's shapes (9
heads, 3 kv heads, head_dim 64) with 8 sequences of 150 positions, on one thread: 77 us a layer against 128 us for
numpy's per-sequence products on contiguous caches and 274 us when the keys must first be gathered. A prompt's
chunk, of any size, gathers its sequence's keys once and uses BLAS products, which a scalar kernel cannot match at
hundreds of rows; and a prompt's tail after a cached prefix then takes the path the whole prompt takes (on the
kernel, which sums in another order, a prompt served from the cache changed smollm2-135m's greedy tokens; BLAS's
own order still follows a chunk's shape, so the two differ in the last bit, by 0.08-0.10 nats on a first token).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numba
import numpy as np
from tiered_kv_cache import KVPool

from mimo_engine.model import attention
from mimo_engine.step import StepBatch

KERNEL_MAX_ROWS = 16  # rows of one sequence up to which the kernel is used: a decode token or a drafted block


@numba.njit(cache=True, fastmath=True, nogil=True, parallel=True)
def paged_attention_rows(q, k, v, rows, row_slots, row_slot_start, row_len, out):  # pragma: no cover - compiled
    """For each row r in `rows`: out[r] = softmax(q[r] . k[slots]) . v[slots] over the row's slots, per head.

    q [N, H, hd] (scaled); k, v [Hkv, slots, hd] (one layer of the pool); row i of `rows` attends to the slots
    row_slots[row_slot_start[i] : row_slot_start[i] + row_len[i]]; out [N, H * hd]."""
    n_head, hd = q.shape[1], q.shape[2]
    n_kv = k.shape[0]
    group = n_head // n_kv
    for task in numba.prange(len(rows) * n_kv):
        i, g = task // n_kv, task % n_kv
        r = rows[i]
        high = np.full(group, -np.inf, dtype=np.float32)  # running max score per query head of the group
        total = np.zeros(group, dtype=np.float32)  # running softmax denominator
        acc = np.zeros((group, hd), dtype=np.float32)  # running weighted sum of values
        score = np.empty(group, dtype=np.float32)
        for j in range(row_len[i]):
            slot = row_slots[row_slot_start[i] + j]
            for h in range(group):  # one pass over each key serves the whole query group
                dot = np.float32(0.0)
                for d in range(hd):
                    dot += q[r, g * group + h, d] * k[g, slot, d]
                score[h] = dot
            for h in range(group):
                if score[h] > high[h]:
                    rescale = math.exp(high[h] - score[h])
                    total[h] *= rescale
                    for d in range(hd):
                        acc[h, d] *= rescale
                    high[h] = score[h]
                p = math.exp(score[h] - high[h])
                total[h] += p
                for d in range(hd):
                    acc[h, d] += p * v[g, slot, d]
        for h in range(group):
            for d in range(hd):
                out[r, (g * group + h) * hd + d] = acc[h, d] / total[h]


class PagedAttention:
    """The attention of one step: stores each layer's new keys and values in the pool, then attends every row."""

    def __init__(self, batch: StepBatch, pool: KVPool) -> None:
        self.pool = pool
        self.calls, self.seconds = 0, 0.0  # what the layers' attention took, for a profile
        starts = np.cumsum([0, *(s.num_tokens for s in batch.sequences)])
        self.write_slots = np.concatenate([pool.slots(s.block_table, s.start_position, s.end_position)
                                           for s in batch.sequences])  # [N]
        self.gathered = []  # (rows, block table, positions to read) of the sequences that take the BLAS path
        kernel_rows, row_slots, row_len, row_start = [], [], [], []
        offset = 0  # where the current sequence's slots start in the concatenated row_slots
        for s, first in zip(batch.sequences, starts):
            if s.prompt or s.num_tokens > KERNEL_MAX_ROWS:
                self.gathered.append((slice(first, first + s.num_tokens), s.block_table, s.end_position))
                continue
            row_slots.append(pool.slots(s.block_table, 0, s.end_position))  # this sequence's slots, all rows share them
            for t in range(s.num_tokens):  # causal: row t sees positions up to its own
                kernel_rows.append(first + t)
                row_start.append(offset)
                row_len.append(s.start_position + t + 1)
            offset += s.end_position
        self.kernel = (np.asarray(kernel_rows, dtype=np.int64),
                       np.concatenate(row_slots) if row_slots else np.zeros(0, dtype=np.int64),
                       np.asarray(row_start, dtype=np.int64), np.asarray(row_len, dtype=np.int64))

    def __call__(self, layer: int, q: Any, k: Any, v: Any) -> Any:
        """Attention output [N, H hd] of the step's rows in `layer`, after storing their keys and values."""
        began = time.perf_counter()
        heads = self.attend(layer, q, k, v)
        self.calls += 1
        self.seconds += time.perf_counter() - began
        return heads

    def attend(self, layer: int, q: Any, k: Any, v: Any) -> Any:
        self.pool.write(layer, self.write_slots, k, v)
        heads = np.empty((q.shape[0], q.shape[1] * q.shape[2]), dtype=q.dtype)  # [N, H hd]
        rows, row_slots, row_start, row_len = self.kernel
        if len(rows):
            # q is a strided view of the fused qkv product; numba compiles a contiguous q to code ~3x faster
            # (measured: 356 vs 108 us a layer at batch 8)
            q_rows = np.ascontiguousarray(q)  # [N, H, hd]
            paged_attention_rows(q_rows, self.pool.k[layer], self.pool.v[layer], rows, row_slots, row_start, row_len,
                                 heads)
        for r, table, end in self.gathered:
            heads[r] = attention(q[r], *self.pool.read(layer, table, end))  # [T, H hd]
        return heads
