"""Read a model's architecture and its weights, in the formats the engine holds them in, from a GGUF file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize
from precision_router.formats import (BLOCK, GGUF_FORMATS, REGISTRY, Packed, Stacked, dequantize as unpack, gguf_blocks,
                                      quantize)
from precision_router.kernels import decoded
from precision_router.policy import native_format

from mimo_engine.model import LayerWeights, ModelConfig, ModelWeights, Weight

# llama GGUFs store q and k rows permuted so that rope rotates adjacent pairs; qwen2 keeps the HF order (halves)
ROPE_STYLES = {"llama": "interleaved", "qwen2": "neox"}
_MISSING = object()


class UnsupportedModelError(ValueError):
    """The GGUF holds an architecture or feature the engine does not implement."""


class GGUFFile(GGUFReader):
    """`GGUFReader` over a plain array view of its memory map. The reader makes a numpy view per metadata value (a
    vocabulary of 151,936 tokens is some 450,000 of them), and each view of an `np.memmap` runs memmap's Python
    `__array_finalize__`: reading qwen2.5-coder-0.5b's file took 7.4 s that way, 2.3 s this way."""

    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, memmap: np.ndarray) -> None:  # GGUFReader.__init__ assigns its np.memmap here
        self._data = memmap.view(np.ndarray)  # the view keeps the map open


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
        raise UnsupportedModelError(f"GGUF architecture {arch!r} is not supported "
                                    f"(supported: {', '.join(ROPE_STYLES)})")
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


def packed_rows(t: Any, fmt: str) -> Any:
    """GGUF tensor `t` ([out, in] rows) in format `fmt`: its own blocks where `fmt` holds its type as it is (Q8_0's
    split into codes and scales), anything else dequantized and quantized. An f32 result is a float32 array; the
    others are `Packed`."""
    if REGISTRY[fmt].gguf_type == t.tensor_type.name:
        if fmt != "q8_0":
            return gguf_blocks(fmt, np.asarray(t.data).reshape(t.data.shape[0], -1), int(t.shape[0]))  # [out, bytes]
        raw = np.asarray(t.data).reshape(t.data.shape[0], -1, 2 + BLOCK)  # [out, in/32, fp16 scale + 32 int8]
        codes = np.ascontiguousarray(raw[..., 2:]).view(np.int8).reshape(raw.shape[0], -1)  # [out, in]
        scales = np.ascontiguousarray(raw[..., :2]).view(np.float16)[..., 0]  # [out, in/32]
        return Packed("q8_0", codes.shape, codes, scales)
    own = GGUF_FORMATS.get(t.tensor_type.name)  # a type a kernel reads as it is decodes by that kernel's decoder
    values = (decoded(packed_rows(t, own)) if own else np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32))
    return values if fmt == "f32" else quantize(values, fmt)  # [out, in]


@dataclass(frozen=True)
class GGUFRows:
    """A GGUF tensor's rows in the file's own quantization, decoded a few at a time: the embedding table, whose
    lookups read a handful of rows, so it is kept exact (its type re-quantized to Q8_0 would move every logit)."""

    qtype: GGMLQuantizationType
    data: np.ndarray  # [V, bytes per row], a copy of the file's blocks
    shape: tuple[int, int]

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The float32 rows `ids`: [N] -> [N, d]."""
        return np.asarray(dequantize(self.data[ids], self.qtype), dtype=np.float32).reshape(len(ids), self.shape[1])


def table_rows(t: Any) -> Any:
    """GGUF tensor `t` as a table of rows to look up, exact: float32 and Q8_0 as arrays or packed rows as they are,
    any other type as its own blocks (`GGUFRows`)."""
    if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.Q8_0):
        return packed_rows(t, "f32" if t.tensor_type != GGMLQuantizationType.Q8_0 else "q8_0")
    data = np.array(np.asarray(t.data))  # a copy, so that nothing keeps the file's memory map alive
    return GGUFRows(t.tensor_type, data.reshape(data.shape[0], -1), (data.shape[0], int(t.shape[0])))


def stack(parts: list[Any]) -> Any:
    """Matrices side by side along the output axis (their rows), as one weight: of one format, one matrix of it;
    of several packed ones, `Stacked` (each part read in its own); with a float32 part, all in float32."""
    if any(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate([p if isinstance(p, np.ndarray) else unpack(p) for p in parts])
    if len({p.fmt for p in parts}) > 1:
        return Stacked(tuple(parts))
    scales = None if parts[0].scales is None else np.concatenate([p.scales for p in parts])
    codes = np.concatenate([p.codes for p in parts])
    return Packed(parts[0].fmt, (codes.shape[0], parts[0].shape[1]), codes, scales)


def load_weights(reader: GGUFReader, config: ModelConfig, held: dict[str, set[str]]) -> tuple[ModelWeights, dict]:
    """Every linear weight in its native form (each GGUF tensor in `native_format` of its type) and in each format
    of `held[group]` ("native" included or not); matrices fused per block (q/k/v, gate/up). float32 weights are
    [in, out] arrays for BLAS, packed ones [out, in] for their kernel. The native form is stored under the name of
    its group's formats (q4_1; q5_0+q8_0 where a block's tensors differ), also returned: {"attn": [per layer],
    "mlp": [per layer], "head": name}."""
    tensors = {t.name: t for t in reader.tensors}

    def vector(name: str) -> Any:  # a copy, so that nothing keeps the file's memory map alive
        t = tensors[name]
        return np.array(np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32))

    def own(name: str) -> str:
        return native_format(tensors[name].tensor_type.name)

    def native(*names: str) -> str:  # the name of a group's native form in one block: its tensors' formats
        return "+".join(sorted({own(n) for n in names}))

    def weight(group: str, native: str, *names: str) -> Weight:  # format -> stored form
        stored: Weight = {}
        for fmt in {native, *held.get(group, ())} - {"native"}:
            rows = stack([packed_rows(tensors[n], own(n) if fmt == native else fmt) for n in names])  # [out, in]
            # BLAS streams a matrix fastest along its longer side (measured: ~25 vs ~18 GB/s for ffn_down at batch
            # 1 and 8), so keep GGUF's [out, in] rows under the [in, out] view when the input side is the longer one
            stored[fmt] = (np.asarray(rows.T if rows.shape[1] > rows.shape[0] else np.ascontiguousarray(rows.T))
                           if isinstance(rows, np.ndarray) else rows)
        return stored

    layers, natives = [], {"attn": [], "mlp": []}
    for i in range(config.n_layer):
        p = f"blk.{i}."
        has_bias = f"{p}attn_q.bias" in tensors
        qkv = [p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"]
        gate_up = [p + "ffn_gate.weight", p + "ffn_up.weight"]
        attn, mlp = native(*qkv, p + "attn_output.weight"), native(*gate_up, p + "ffn_down.weight")
        natives["attn"].append(attn)
        natives["mlp"].append(mlp)
        layers.append(
            LayerWeights(
                attn_norm=vector(p + "attn_norm.weight"),
                wqkv=weight("attn", attn, *qkv),
                bqkv=np.concatenate([vector(p + f"attn_{x}.bias") for x in "qkv"]) if has_bias else None,
                wo=weight("attn", attn, p + "attn_output.weight"),
                ffn_norm=vector(p + "ffn_norm.weight"),
                w_gate_up=weight("mlp", mlp, *gate_up),
                w_down=weight("mlp", mlp, p + "ffn_down.weight"),
            )
        )
    head_name = "output.weight" if "output.weight" in tensors else "token_embd.weight"  # else tied embeddings
    natives["head"] = native(head_name)
    lm_head = weight("head", natives["head"], head_name)
    embd = tensors["token_embd.weight"]
    if head_name == "token_embd.weight" and natives["head"] != "f32":
        token_embd = lm_head[natives["head"]]  # tied: the packed head's rows are the embeddings
    else:
        token_embd = table_rows(embd)  # [V, d]: rows looked up
    weights = ModelWeights(token_embd=token_embd, layers=layers, output_norm=vector("output_norm.weight"),
                           lm_head=lm_head)
    return weights, natives
