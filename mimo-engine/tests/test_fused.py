"""The fused decode step against the reference `model.block`: the same logits to the bit, on a random model that
has every feature a block can have (q/k/v biases, q/k/v stacked from parts of different formats, K-quants, MXFP4, a
float block that falls back) and on the real smollm2-135m; its scratch arrays under two threads at once; and a step
with a prompt chunk, whose attention is on gathered keys, runs the reference.

The tolerance is zero on purpose: the fused block rounds every value that is quantized to int8 next as the
reference does (numpy's summation order in the norm, one compiled SwiGLU for both), because a single int8 code
rounded the other way moved a logit by up to 1 nat."""

import threading

import numpy as np
import pytest
from precision_router.testing import random_packed
from tiered_kv_cache import KVPool

from mimo_core.settings import load_settings
from mimo_core.testing import TEST_MODEL
from mimo_engine.fused import FusedBlocks
from mimo_engine.gguf_model import stack
from mimo_engine.model import LayerWeights, ModelConfig, ModelWeights, Routes, block, hidden_states
from mimo_engine.paged_attention import PagedAttention
from mimo_engine.runtime import EngineCore, LoadedModel, Work
from mimo_engine.step import ScheduledSequence, StepBatch, WeightPlan

CONFIG = ModelConfig(arch="qwen2", n_layer=3, n_embd=256, n_head=4, n_kv_head=2, head_dim=64, n_ff=512,
                     vocab_size=50, context_length=256, rope_theta=10000.0, rope_style="neox", norm_eps=1e-6)
# each block's forms: q, k, v (stacked where they differ), output, gate and up, down; the last is float32
FORMATS = [("q5_0", "q5_0", "q8_0", "q5_0", "q5_0", "q6_k"), ("q4_k", "q4_k", "q4_k", "q4_1", "mxfp4", "q4_k"),
           ("f32",) * 6]


def random_weights(rng: np.random.Generator) -> ModelWeights:
    """A small random model whose blocks read the FORMATS, each block's forms under the name "w"."""
    c, hd = CONFIG, CONFIG.head_dim

    def form(fmt: str, rows: int, cols: int):
        if fmt == "f32":
            return (rng.standard_normal((cols, rows)) * 0.05).astype(np.float32)  # [in, out]
        return random_packed(fmt, rows, cols, rng)

    def stacked(fmts, rows, cols):
        parts = [form(f, r, cols) for f, r in zip(fmts, rows)]
        return np.concatenate(parts, axis=1) if fmts[0] == "f32" else stack(parts)

    def vector(n: int, around: float = 1.0):
        return (around + 0.1 * rng.standard_normal(n)).astype(np.float32)

    layers = []
    for q, k, v, o, gate_up, down in FORMATS:
        layers.append(LayerWeights(
            attn_norm=vector(c.n_embd), ffn_norm=vector(c.n_embd),
            wqkv={"w": stacked((q, k, v), (c.n_head * hd, c.n_kv_head * hd, c.n_kv_head * hd), c.n_embd)},
            bqkv=vector((c.n_head + 2 * c.n_kv_head) * hd, 0.0),
            wo={"w": form(o, c.n_embd, c.n_head * hd)},
            w_gate_up={"w": stacked((gate_up, gate_up), (c.n_ff, c.n_ff), c.n_embd)},
            w_down={"w": form(down, c.n_embd, c.n_ff)}))
    table = rng.standard_normal((c.vocab_size, c.n_embd)).astype(np.float32)
    return ModelWeights(token_embd=table, layers=layers, output_norm=vector(c.n_embd), lm_head={"w": table.T})


def test_a_fused_step_equals_the_reference_on_every_kind_of_block():
    rng = np.random.default_rng(0)
    weights = random_weights(rng)
    # two sequences with keys and values already cached: one decodes a token, the other verifies a drafted block
    sequences = (ScheduledSequence("decode", (7,), 37, (0, 1, 2), (0,), WeightPlan.every(3, "w", "w", "w")),
                 ScheduledSequence("draft", (1, 2, 3, 4, 5), 20, (3, 4), (0, 1, 2, 3, 4),
                                   WeightPlan.every(3, "w", "w", "w")))
    batch = StepBatch(sequences)
    tokens = np.asarray([t for s in sequences for t in s.token_ids])
    positions = np.concatenate([np.arange(s.start_position, s.end_position) for s in sequences])
    pools = []
    for run_block in (block, FusedBlocks(CONFIG)):
        pool = KVPool(CONFIG.n_layer, CONFIG.n_kv_head, CONFIG.head_dim, 5, 16)
        filled = np.random.default_rng(1)  # the same cached keys and values for both
        pool.k[:], pool.v[:] = filled.standard_normal(pool.k.shape), filled.standard_normal(pool.v.shape)
        routes = Routes([(("w", None),)] * 3, [(("w", None),)] * 3, (("w", None),))
        h = hidden_states(weights, CONFIG, tokens, positions, PagedAttention(batch, pool), routes, run_block)
        pools.append((h, pool, routes.read))
    (reference, ref_pool, ref_read), (fused, fused_pool, fused_read) = pools
    np.testing.assert_array_equal(fused, reference)
    np.testing.assert_array_equal(fused_pool.k, ref_pool.k)  # the new keys and values, where they belong
    np.testing.assert_array_equal(fused_pool.v, ref_pool.v)
    assert fused_read[("fused", "blocks")][1] == 2  # the float block ran the reference
    for key in (("attn", "q5_0+q8_0"), ("mlp", "q4_k"), ("attn", "f32")):  # bytes read, counted as the reference does
        assert fused_read[key][:2] == ref_read[key][:2]



def test_a_prompt_chunk_of_few_rows_is_gathered_and_its_step_runs_the_reference():
    # a prompt's tail after a cached prefix must be computed as the whole prompt was: attention on gathered keys
    plan = WeightPlan.every(3, "w", "w", "w")
    sequences = (ScheduledSequence("decode", (7,), 37, (0, 1, 2), (0,), plan),
                 ScheduledSequence("prompt", (1, 2, 3), 16, (3, 4), (2,), plan, prompt=True))
    pool = KVPool(CONFIG.n_layer, CONFIG.n_kv_head, CONFIG.head_dim, 5, 16)
    attend = PagedAttention(StepBatch(sequences), pool)
    rows, *_ = attend.kernel
    assert rows.tolist() == [0] and [(r, end) for r, _, end in attend.gathered] == [(slice(1, 4), 19)]
    weights = random_weights(np.random.default_rng(0))
    routes = Routes([(("w", None),)] * 3, [(("w", None),)] * 3, (("w", None),))
    hidden_states(weights, CONFIG, np.asarray([7, 1, 2, 3]), np.asarray([37, 16, 17, 18]), attend, routes,
                  FusedBlocks(CONFIG))
    assert ("fused", "blocks") not in routes.read

@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return LoadedModel.load(TEST_MODEL, load_settings().cache_dir)


def decode(model: LoadedModel, prompt: list[int], batch: int, steps: int, fused: bool) -> tuple[np.ndarray, dict]:
    """Greedy logits of `steps` decode steps of `batch` sequences after `prompt` (a drafted block of four tokens in
    the first step of sequence 0), with blocks fused or not."""
    blocks, model.fused_blocks = model.fused_blocks, model.fused_blocks if fused else None
    try:
        core, read, out = EngineCore(model, num_blocks=64), {}, []
        first = int(core.prefill("prompt", prompt, reuse=False)[-1].argmax())
        tokens = {i: [first] * (4 if i == 0 else 1) for i in range(batch)}
        for seq_id in tokens:
            core.fork("prompt", seq_id)
        for _ in range(steps):
            for seq_id, new in tokens.items():
                core.append(seq_id, new)
            rows = core.step([Work(seq_id, len(new), "all") for seq_id, new in tokens.items()], read)
            out.append(np.concatenate(rows))
            tokens = {seq_id: [int(row[-1].argmax())] for seq_id, row in zip(tokens, rows)}
        return np.concatenate(out), read  # [logit rows of every step, V]
    finally:
        model.fused_blocks = blocks


@pytest.mark.model
@pytest.mark.parametrize("batch", [1, 4])
def test_smollm2_decodes_the_same_logits_fused(model, batch):
    rng = np.random.default_rng(batch)
    for prompt in (model.tokenizer.encode("The capital of France is"),
                   [int(t) for t in rng.integers(0, model.config.vocab_size, 40)]):  # a real and a random prompt
        fused, read = decode(model, prompt, batch, steps=6, fused=True)
        reference, _ = decode(model, prompt, batch, steps=6, fused=False)
        np.testing.assert_array_equal(fused, reference)
        assert read[("fused", "blocks")][1] == 6 * model.config.n_layer  # every block of every step was fused


@pytest.mark.model
def test_two_threads_decoding_at_once_get_what_each_gets_alone(model):
    prompts = [model.tokenizer.encode("Once upon a time"), model.tokenizer.encode("def fibonacci(n):")]
    alone = [decode(model, p, 2, steps=8, fused=True)[0] for p in prompts]
    together: list = [None, None]

    def run(i: int) -> None:
        model.use_threads()
        together[i] = decode(model, prompts[i], 2, steps=8, fused=True)[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)
