"""Read a model's architecture and float32 weights from a GGUF file (the `gguf` package's reader and dequantizer)."""

from __future__ import annotations

from typing import Any

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

from mimo_engine.model import LayerWeights, ModelConfig, ModelWeights
from mimo_engine.xp import xp

# llama GGUFs store q and k rows permuted so that rope rotates adjacent pairs; qwen2 keeps the HF order (halves)
ROPE_STYLES = {"llama": "interleaved", "qwen2": "neox"}
_MISSING = object()


class UnsupportedModelError(ValueError):
    """The GGUF holds an architecture or feature the engine does not implement."""


def metadata(reader: GGUFReader, key: str, default: Any = _MISSING) -> Any:
    """The value of GGUF metadata `key`, or `default` when absent."""
    field = reader.fields.get(key)
    if field is not None:
        return field.contents()
    if default is _MISSING:
        raise UnsupportedModelError(f"GGUF metadata has no {key!r}")
    return default


def read_config(reader: GGUFReader) -> ModelConfig:
    """The architecture hyper-parameters; an UnsupportedModelError for anything but llama and qwen2."""
    arch = metadata(reader, "general.architecture")
    if arch not in ROPE_STYLES:
        raise UnsupportedModelError(f"GGUF architecture {arch!r} is not supported (supported: {', '.join(ROPE_STYLES)})")
    scaling = metadata(reader, f"{arch}.rope.scaling.type", "none")
    if scaling != "none":
        raise UnsupportedModelError(f"rope scaling {scaling!r} is not supported")
    n_embd = int(metadata(reader, f"{arch}.embedding_length"))
    n_head = int(metadata(reader, f"{arch}.attention.head_count"))
    head_dim = int(metadata(reader, f"{arch}.attention.key_length", n_embd // n_head))
    if int(metadata(reader, f"{arch}.rope.dimension_count", head_dim)) != head_dim:
        raise UnsupportedModelError("partial rotary embeddings are not supported")
    return ModelConfig(
        arch=arch,
        n_layer=int(metadata(reader, f"{arch}.block_count")),
        n_embd=n_embd,
        n_head=n_head,
        n_kv_head=int(metadata(reader, f"{arch}.attention.head_count_kv", n_head)),
        head_dim=head_dim,
        n_ff=int(metadata(reader, f"{arch}.feed_forward_length")),
        vocab_size=len(reader.fields["tokenizer.ggml.tokens"].data),
        context_length=int(metadata(reader, f"{arch}.context_length")),
        rope_theta=float(metadata(reader, f"{arch}.rope.freq_base", 10000.0)),
        rope_style=ROPE_STYLES[arch],
        norm_eps=float(metadata(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
    )


def load_weights(reader: GGUFReader, config: ModelConfig) -> ModelWeights:
    """Dequantize every tensor to float32, matrices transposed to [in, out] and fused per block."""
    tensors = {t.name: t for t in reader.tensors}

    def array(name: str) -> np.ndarray:  # GGUF's [out, in] matrices and vectors, as float32 host arrays
        t = tensors[name]
        return np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)

    def vector(name: str) -> Any:
        return xp.array(array(name))  # a copy, so that nothing keeps the file's memory map alive

    def matrix(*names: str) -> Any:  # [in, sum of outs]: the named matrices side by side
        stacked = np.concatenate([array(n) for n in names])  # [out, in], as GGUF stores it
        # BLAS streams a matrix fastest along its longer side (measured: ~25 vs ~18 GB/s for ffn_down at batch 1
        # and 8), so keep GGUF's [out, in] rows under the [in, out] view when the input side is the longer one
        return xp.asarray(stacked.T if stacked.shape[1] > stacked.shape[0] else np.ascontiguousarray(stacked.T))

    layers = []
    for i in range(config.n_layer):
        p = f"blk.{i}."
        has_bias = f"{p}attn_q.bias" in tensors
        layers.append(
            LayerWeights(
                attn_norm=vector(p + "attn_norm.weight"),
                wqkv=matrix(p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"),
                bqkv=xp.concatenate([vector(p + f"attn_{x}.bias") for x in "qkv"]) if has_bias else None,
                wo=matrix(p + "attn_output.weight"),
                ffn_norm=vector(p + "ffn_norm.weight"),
                w_gate_up=matrix(p + "ffn_gate.weight", p + "ffn_up.weight"),
                w_down=matrix(p + "ffn_down.weight"),
            )
        )
    if "output.weight" in tensors:
        lm_head = matrix("output.weight")  # [d, V]
        token_embd = xp.array(array("token_embd.weight"))  # [V, d]
    else:  # tied embeddings: one array serves both
        lm_head = matrix("token_embd.weight")  # [d, V]
        token_embd = lm_head.T  # [V, d]
    return ModelWeights(token_embd=token_embd, layers=layers, output_norm=vector("output_norm.weight"), lm_head=lm_head)
