"""A model as a Hugging Face folder that transformers and vLLM load: what `mimo-engine export-hf` writes.

The folder holds config.json, generation_config.json, tokenizer.json and tokenizer_config.json (the GGUF's chat
template and special tokens) and model.safetensors in float32. The weights are the ones the engine's `f32` policy
computes with (each GGUF tensor dequantized), split back into Hugging Face's tensors: the engine fuses q/k/v and
gate/up, and llama GGUFs hold q and k rows permuted for interleaved rope, which is undone here (Hugging Face's llama
rotates halves). The folder is written beside its destination and renamed into place at the end, so an interrupted
export never leaves a half-written model under the destination's name.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader
from safetensors.numpy import save_file

from mimo_core.contract import Contract
from mimo_core.settings import is_model_path, served_model_name
from mimo_engine.gguf_model import GGUFFile, UnsupportedModelError, metadata
from mimo_engine.model import embed
from mimo_engine.pull import ensure_model
from mimo_engine.runtime import LoadedModel

# the engine's architecture -> (Hugging Face's model class, its model_type)
HF_ARCHITECTURES = {"llama": ("LlamaForCausalLM", "llama"), "qwen2": ("Qwen2ForCausalLM", "qwen2")}
# GGUF special-token ids -> tokenizer_config.json's names for them
SPECIAL_TOKENS = {"bos": "bos_token", "eos": "eos_token", "unknown": "unk_token", "padding": "pad_token"}


class ExportError(ValueError):
    """The destination cannot take the export (it holds files and --force was not given, or it is not a folder)."""


@dataclass
class HFExport(Contract):
    """What an export wrote: where, from which model, and how big."""

    SCHEMA = "mimo.engine-export-hf/1"

    model: str
    path: str
    architecture: str
    tensors: int
    bytes: int
    tie_word_embeddings: bool
    seconds: float


def unpermute_rope(rows: np.ndarray, heads: int) -> np.ndarray:
    """A llama GGUF's q or k rows ([heads hd, ...]) in Hugging Face's order: llama.cpp's converter ordered each head's
    rows (i, i + hd/2) as adjacent pairs for interleaved rope; this is the inverse of its permutation."""
    return rows.reshape(heads, rows.shape[0] // heads // 2, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def hf_tensors(model: LoadedModel, tied: bool) -> dict[str, np.ndarray]:
    """Hugging Face's tensors of a model loaded with the `f32` policy: float32, [out, in] rows, contiguous."""
    cfg, w = model.config, model.weights
    q_size, kv_size = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim

    def rows(weight: dict) -> np.ndarray:  # the engine keeps float32 forms as [in, out] for BLAS
        return np.ascontiguousarray(weight["f32"].T)

    def rope_order(q: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if cfg.rope_style == "neox":  # already Hugging Face's
            return q, k
        return unpermute_rope(q, cfg.n_head), unpermute_rope(k, cfg.n_kv_head)

    tensors = {"model.embed_tokens.weight": embed(w.token_embd, np.arange(cfg.vocab_size)),  # [V, d]
               "model.norm.weight": w.output_norm}
    if not tied:
        tensors["lm_head.weight"] = rows(w.lm_head)  # [V, d]
    for i, layer in enumerate(w.layers):
        p = f"model.layers.{i}."
        qkv = rows(layer.wqkv)  # [(H + 2 Hkv) hd, d]
        q, k = rope_order(qkv[:q_size], qkv[q_size:q_size + kv_size])
        gate_up = rows(layer.w_gate_up)  # [2 ff, d]
        tensors.update({
            p + "input_layernorm.weight": layer.attn_norm,
            p + "self_attn.q_proj.weight": q,
            p + "self_attn.k_proj.weight": k,
            p + "self_attn.v_proj.weight": qkv[q_size + kv_size:],
            p + "self_attn.o_proj.weight": rows(layer.wo),
            p + "post_attention_layernorm.weight": layer.ffn_norm,
            p + "mlp.gate_proj.weight": gate_up[:cfg.n_ff],
            p + "mlp.up_proj.weight": gate_up[cfg.n_ff:],
            p + "mlp.down_proj.weight": rows(layer.w_down),
        })
        if layer.bqkv is not None:
            bq, bk = rope_order(layer.bqkv[:q_size], layer.bqkv[q_size:q_size + kv_size])
            tensors.update({p + "self_attn.q_proj.bias": bq, p + "self_attn.k_proj.bias": bk,
                            p + "self_attn.v_proj.bias": layer.bqkv[q_size + kv_size:]})
    return {name: np.ascontiguousarray(t, dtype=np.float32) for name, t in tensors.items()}


def special_ids(reader: GGUFReader) -> dict[str, int]:
    """The GGUF's special-token ids that it names: {"bos": id, "eos": id, ...}."""
    found = {kind: metadata(reader, f"tokenizer.ggml.{kind}_token_id", None) for kind in SPECIAL_TOKENS}
    return {kind: int(i) for kind, i in found.items() if i is not None}


def hf_config(model: LoadedModel, reader: GGUFReader, tied: bool, has_bias: bool) -> dict[str, Any]:
    """config.json of the model."""
    cfg = model.config
    architecture, model_type = HF_ARCHITECTURES[cfg.arch]
    ids = special_ids(reader)
    config: dict[str, Any] = {
        "architectures": [architecture], "model_type": model_type, "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd, "intermediate_size": cfg.n_ff, "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim,
        "hidden_act": "silu", "max_position_embeddings": cfg.context_length,
        "rms_norm_eps": float(str(np.float32(cfg.norm_eps))),  # GGUF's float32 as its shortest decimal: 1e-05
        "tie_word_embeddings": tied, "bos_token_id": ids.get("bos"), "eos_token_id": ids.get("eos"),
        # transformers 5 reads rope_parameters and dtype; 4 (which older vLLM releases pin) rope_theta and
        # torch_dtype, and would silently take its default theta without it
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta}, "rope_theta": cfg.rope_theta,
        "dtype": "float32", "torch_dtype": "float32",
    }
    if cfg.arch == "llama":
        config.update(attention_bias=has_bias, mlp_bias=False)
    else:  # Qwen2's q/k/v always have biases
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layer)
    return config


def tokenizer_files(model: LoadedModel, reader: GGUFReader) -> dict[str, Any]:
    """tokenizer_config.json and generation_config.json: the chat template and special tokens, and the tokens that
    end a generation (the engine's: the GGUF's eos and the end-of-turn control tokens)."""
    tokens = metadata(reader, "tokenizer.ggml.tokens")
    ids = special_ids(reader)
    # The engine tokenizes without adding any token of its own (no BOS): the same here
    tokenizer_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model.config.context_length,
        "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        **{SPECIAL_TOKENS[kind]: tokens[i] for kind, i in ids.items()},
    }
    template = metadata(reader, "tokenizer.chat_template", None)
    if template is not None:
        tokenizer_config["chat_template"] = template
    generation = {"bos_token_id": ids.get("bos"), "eos_token_id": sorted(model.tokenizer.eos_ids),
                  "pad_token_id": ids.get("padding")}
    return {"tokenizer_config.json": tokenizer_config,
            "generation_config.json": {k: v for k, v in generation.items() if v is not None}}


def _check_destination(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} exists and is not empty (--force replaces it)")


def export_hf(reference: str, out: Path, cache_dir: Path, force: bool = False) -> HFExport:
    """Write model `reference` (a registry name, pulled on first use, or a GGUF file's path) into folder `out` as a
    Hugging Face model in float32; ExportError if `out` holds files and not `force`."""
    started = time.perf_counter()
    out = Path(out).absolute()
    _check_destination(out, force)  # before the load: a refusal should not take seconds
    path = Path(served_model_name(reference)) if is_model_path(reference) else ensure_model(reference, cache_dir)
    reader = GGUFFile(path)
    model = LoadedModel.from_gguf(reference, path, policies=("f32",))
    tied = "output.weight" not in {t.name for t in reader.tensors}
    tensors = hf_tensors(model, tied)
    has_bias = "model.layers.0.self_attn.q_proj.bias" in tensors
    if model.config.arch == "qwen2" and not has_bias:
        raise UnsupportedModelError("a qwen2 GGUF without q/k/v biases: Hugging Face's Qwen2 always has them")
    files = {"config.json": hf_config(model, reader, tied, has_bias), **tokenizer_files(model, reader)}
    texts = {name: json.dumps(content, indent=2, ensure_ascii=False) + "\n" for name, content in files.items()}
    texts["tokenizer.json"] = model.tokenizer.to_json()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        save_file(tensors, partial / "model.safetensors", metadata={"format": "pt"})  # transformers wants "pt"
        for name, text in texts.items():
            (partial / name).write_text(text)
        for written in [partial, *partial.iterdir()]:  # mkdtemp's folder (and safetensors' file) are private
            written.chmod(0o755 if written.is_dir() else 0o644)
        _check_destination(out, force)  # again: it may have changed while the weights were written
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return HFExport(model=reference, path=str(out), architecture=HF_ARCHITECTURES[model.config.arch][0],
                    tensors=len(tensors), bytes=sum(t.nbytes for t in tensors.values()), tie_word_embeddings=tied,
                    seconds=round(time.perf_counter() - started, 1))
