"""The model functions on small random arrays; the GGUF loader: its reader, its refusal of other architectures."""

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter
from gguf.quants import dequantize
from precision_router.formats import GGUF_FORMATS
from precision_router.kernels import decoded

from mimo_engine.gguf_model import GGUFFile, UnsupportedModelError, packed_rows, read_config
from mimo_engine.model import ModelConfig, apply_rope, attention, rope_tables

rng = np.random.default_rng(0)


def _rope(positions, head_dim: int, style: str):
    config = ModelConfig("llama", 1, 8, 1, 1, head_dim, 8, 8, 4096, 10000.0, style, 1e-5)
    return rope_tables(np.asarray(positions), config)


def test_interleaved_rope_on_gguf_rows_equals_neox_rope_on_hf_rows():
    # llama GGUFs store q/k rows permuted (row 2i <- HF row i, row 2i+1 <- HF row i + hd/2) for the interleaved rope
    n, heads, hd = 5, 3, 8
    hf = rng.standard_normal((n, heads, hd), dtype=np.float32)
    gguf_order = np.stack([np.arange(hd // 2), np.arange(hd // 2) + hd // 2], axis=1).reshape(-1)  # [0, 4, 1, 5, ...]
    neox = apply_rope(hf, _rope(np.arange(7, 7 + n), hd, "neox"))
    interleaved = apply_rope(hf[..., gguf_order], _rope(np.arange(7, 7 + n), hd, "interleaved"))
    np.testing.assert_allclose(interleaved, neox[..., gguf_order], atol=1e-6)


@pytest.mark.parametrize("style", ["neox", "interleaved"])
def test_rope_rotates_pairs_and_preserves_relative_positions(style):
    hd = 16
    q, k = rng.standard_normal((2, 1, 1, hd), dtype=np.float32)

    def score(pq: int, pk: int) -> float:
        return float((apply_rope(q, _rope([pq], hd, style)) * apply_rope(k, _rope([pk], hd, style))).sum())

    assert score(10, 3) == pytest.approx(score(107, 100), abs=1e-4)
    assert np.linalg.norm(apply_rope(q, _rope([5], hd, style))) == pytest.approx(np.linalg.norm(q), rel=1e-5)


def test_causal_attention_over_a_prefix_equals_one_query_at_a_time():
    prefix, new, heads, kv_heads, hd = 4, 3, 6, 2, 8  # grouped-query: 3 query heads per kv head
    q = rng.standard_normal((new, heads, hd), dtype=np.float32)
    k, v = rng.standard_normal((2, kv_heads, prefix + new, hd), dtype=np.float32)  # head-major, as read_heads
    together = attention(q, k, v)  # [new, heads * hd]
    for t in range(new):
        visible = prefix + t + 1
        alone = attention(q[t : t + 1], k[:, :visible], v[:, :visible])
        np.testing.assert_allclose(together[t : t + 1], alone, atol=1e-5)


def test_attention_head_h_reads_kv_head_h_over_group():
    heads, kv_heads, hd = 4, 2, 8
    q = rng.standard_normal((1, heads, hd), dtype=np.float32)
    k, v = rng.standard_normal((2, kv_heads, 5, hd), dtype=np.float32)  # head-major, as read_heads
    out = attention(q, k, v).reshape(heads, hd)
    for h in range(heads):
        kv = h // (heads // kv_heads)
        weights = np.exp(k[kv] @ q[0, h])  # q is already scaled, as block scales it
        np.testing.assert_allclose(out[h], weights @ v[kv] / weights.sum(), atol=1e-5)


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    path = tmp_path / "gpt2.gguf"
    writer = GGUFWriter(path, "gpt2")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedModelError, match="'gpt2' is not supported"):
        read_config(GGUFReader(path))


def test_the_fast_reader_reads_what_gguf_reader_reads(user_gguf):
    ours, theirs = GGUFFile(user_gguf), GGUFReader(user_gguf)
    assert type(ours.data) is np.ndarray  # a plain view: no memmap per metadata value
    assert [(f.name, f.contents()) for f in ours.fields.values()] == [(f.name, f.contents())
                                                                     for f in theirs.fields.values()]
    assert [(t.name, t.tensor_type, list(t.shape)) for t in ours.tensors] == [
        (t.name, t.tensor_type, list(t.shape)) for t in theirs.tensors]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(ours.tensors, theirs.tensors))


def test_a_gguf_tensor_decodes_by_its_kernel_to_the_values_gguf_dequantizes(user_gguf):
    # what the engine requantizes (the entropy policy's MXFP4 copy) starts from these: compiled, not gguf's numpy
    tensors = [t for t in GGUFFile(user_gguf).tensors if t.name.startswith(("blk.0.", "token_embd"))]
    for t in (t for t in tensors if len(t.shape) == 2):
        ours = decoded(packed_rows(t, GGUF_FORMATS[t.tensor_type.name]))
        assert np.array_equal(ours, np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)), t.name
