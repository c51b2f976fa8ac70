"""`mimo-engine export-hf`: the Hugging Face folder of smollm2-135m against the engine itself (config, weights read
back and fused again, tokenizer), the command's refusals, and transformers on the folder against the engine's
float32 logits (in the vLLM interpreter, which brings transformers and torch)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGUFReader
from safetensors.numpy import load_file
from tokenizers import Tokenizer as HFTokenizer

from mimo_core.settings import load_settings
from mimo_core.testing import TEST_MODEL
from mimo_engine import export_hf as export_module
from mimo_engine.export_hf import export_hf
from mimo_engine.model import embed
from mimo_engine.pull import ensure_model
from mimo_engine.runtime import BLOCK_SIZE, EngineCore, LoadedModel

FILES = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"}
TEXTS = [
    "The capital of France is Paris.",
    "def fibonacci(n: int) -> int:\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "12 * 8 = 96; 1234567 + 89 = 1234656",
    "Ünïcødé, émojis 🙂 and\ttabs  and   spaces",
    "<|im_start|>user\nWhat is 12 * 8?<|im_end|>\n<|im_start|>assistant\n",
]
# transformers and the engine both compute in float32 on the same weights, summing in different orders (BLAS
# blocking, fused products, rope's pair layout); measured: up to 1e-4 in a log-probability. A wrong rope permutation
# or a misplaced tensor moves them by whole nats, so 2e-3 (the bound of scripts/check_reference.py) separates the two.
TOLERANCE = 2e-3


def rope_permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter's permutation of Hugging Face's q/k rows into a GGUF's (convert_hf_to_gguf.py)."""
    return rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


@pytest.fixture(scope="module")
def cache_dir():
    return load_settings().cache_dir


@pytest.fixture(scope="module")
def engine(cache_dir) -> LoadedModel:
    """The model as the engine's float32 policy runs it."""
    return LoadedModel.load(TEST_MODEL, cache_dir, policies=("f32",))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, cache_dir):
    """smollm2-135m exported with --force over a folder that held a stale file."""
    folder = tmp_path_factory.mktemp("export") / "smollm2-hf"
    folder.mkdir()
    (folder / "stale.txt").write_text("from an earlier export\n")
    return export_hf(TEST_MODEL, folder, cache_dir, force=True), folder


def test_the_folder_is_complete_and_describes_the_model(exported, engine, cache_dir):
    result, folder = exported
    assert {p.name for p in folder.iterdir()} == FILES  # the stale file went with --force
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no partial folder left beside it
    config = json.loads((folder / "config.json").read_text())
    cfg = engine.config
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == \
        (cfg.n_embd, cfg.n_ff, cfg.n_layer)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == \
        (cfg.n_head, cfg.n_kv_head, cfg.head_dim)
    assert (config["vocab_size"], config["max_position_embeddings"]) == (cfg.vocab_size, cfg.context_length)
    assert config["rope_parameters"]["rope_theta"] == config["rope_theta"] == cfg.rope_theta
    assert np.float32(config["rms_norm_eps"]) == np.float32(cfg.norm_eps)
    reader = GGUFReader(ensure_model(TEST_MODEL, cache_dir))
    tied = "output.weight" not in {t.name for t in reader.tensors}
    assert config["tie_word_embeddings"] is tied is result.tie_word_embeddings
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    eos = int(reader.fields["tokenizer.ggml.eos_token_id"].contents())
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"] == reader.fields["tokenizer.chat_template"].contents()
    assert tokenizer_config["eos_token"] == tokens[eos] and config["eos_token_id"] == eos
    generation = json.loads((folder / "generation_config.json").read_text())
    assert set(generation["eos_token_id"]) == engine.tokenizer.eos_ids  # the tokens the engine stops at
    assert result.path == str(folder) and result.bytes == sum(t.nbytes for t in load_file(
        folder / "model.safetensors").values())


def test_the_weights_read_back_and_fused_again_are_the_engines_float32_weights(exported, engine):
    _, folder = exported
    tensors = load_file(folder / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {np.dtype(np.float32)}
    cfg, weights = engine.config, engine.weights
    for i, layer in enumerate(weights.layers):
        p = f"model.layers.{i}.self_attn."
        q = rope_permute(tensors[p + "q_proj.weight"], cfg.n_head)  # back to the GGUF's interleaved order
        k = rope_permute(tensors[p + "k_proj.weight"], cfg.n_kv_head)
        assert np.array_equal(np.concatenate([q, k, tensors[p + "v_proj.weight"]]).T, layer.wqkv["f32"])
        assert np.array_equal(tensors[p + "o_proj.weight"].T, layer.wo["f32"])
        m = f"model.layers.{i}.mlp."
        assert np.array_equal(np.concatenate([tensors[m + "gate_proj.weight"], tensors[m + "up_proj.weight"]]).T,
                              layer.w_gate_up["f32"])
        assert np.array_equal(tensors[m + "down_proj.weight"].T, layer.w_down["f32"])
        assert np.array_equal(tensors[f"model.layers.{i}.input_layernorm.weight"], layer.attn_norm)
        assert np.array_equal(tensors[f"model.layers.{i}.post_attention_layernorm.weight"], layer.ffn_norm)
        # the exported order is not the GGUF's: Hugging Face's llama rotates halves, the GGUF adjacent pairs
        assert not np.array_equal(tensors[p + "q_proj.weight"], layer.wqkv["f32"].T[: cfg.n_head * cfg.head_dim])
    assert np.array_equal(tensors["model.norm.weight"], weights.output_norm)
    table = embed(weights.token_embd, np.arange(cfg.vocab_size))
    assert np.array_equal(tensors["model.embed_tokens.weight"], table)
    assert "lm_head.weight" not in tensors and np.array_equal(weights.lm_head["f32"].T, table)  # tied


def test_the_tokenizer_json_encodes_and_decodes_as_the_engine(exported, engine):
    _, folder = exported
    tokenizer = HFTokenizer.from_file(str(folder / "tokenizer.json"))
    for text in TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert ids == engine.tokenizer.encode(text)
        assert tokenizer.decode(ids, skip_special_tokens=False) == engine.tokenizer.decode(ids) == text


def test_an_interrupted_export_leaves_nothing(tmp_path, cache_dir, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_hf(TEST_MODEL, tmp_path / "out", cache_dir)
    assert list(tmp_path.iterdir()) == []


def mimo_engine(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mimo_engine", *args], capture_output=True, text=True, timeout=120,
                          env=os.environ)


@pytest.mark.parametrize("case", ["not empty", "unknown model", "unsupported architecture"])
def test_a_refused_export_is_one_line_and_exit_code_2(case, tmp_path, unsupported_gguf):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine\n")
    model = {"not empty": TEST_MODEL, "unknown model": "no-such-model", "unsupported architecture": str(
        unsupported_gguf)}[case]
    result = mimo_engine("export-hf", model, str(out if case == "not empty" else tmp_path / "new"))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("mimo-engine: error:")
    says = {"not empty": "is not empty (--force replaces it)", "unknown model": "unknown model 'no-such-model'",
            "unsupported architecture": "GGUF architecture 'gemma2' is not supported"}[case]
    assert says in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != unsupported_gguf.name) == ["out"]
    assert (out / "keep.txt").read_text() == "mine\n"


TRANSFORMERS_SIDE = """
import json, sys
import numpy as np, torch
from transformers import AutoModelForCausalLM, AutoTokenizer

folder, request, out = sys.argv[1:4]
torch.set_num_threads(2)
asked = json.load(open(request))
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
with torch.no_grad():
    logprobs = [torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1).numpy() for ids in asked["ids"]]
np.savez(out, *logprobs)
chat = tokenizer.apply_chat_template(asked["messages"], tokenize=False, add_generation_prompt=True)
print(json.dumps({"ids": [tokenizer(t, add_special_tokens=False)["input_ids"] for t in asked["texts"]], "chat": chat}))
"""


def test_transformers_on_the_folder_computes_the_engines_float32_log_probabilities(exported, engine, vllm_python,
                                                                                   tmp_path):
    _, folder = exported
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 12 * 8?"}]
    texts = [*TEXTS, " ".join(TEXTS * 4)]  # the last one long enough for rope to turn far (about 400 positions)
    ids = [engine.tokenizer.encode(t) for t in texts] + [engine.tokenizer.encode_chat(messages)]
    (tmp_path / "asked.json").write_text(json.dumps({"texts": texts, "messages": messages, "ids": ids}))
    done = subprocess.run([vllm_python, "-c", TRANSFORMERS_SIDE, str(folder), str(tmp_path / "asked.json"),
                           str(tmp_path / "logprobs.npz")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    assert theirs["ids"] == ids[: len(texts)]  # transformers' tokenizer on the folder: the engine's ids
    assert theirs["chat"] == engine.tokenizer.render_chat(messages)  # and its chat template, rendered alike
    logprobs = np.load(tmp_path / "logprobs.npz")
    for n, prompt in enumerate(ids):
        core = EngineCore(engine, num_blocks=len(prompt) // BLOCK_SIZE + 1)
        logits = core.prefill(0, prompt, "all", reuse=False).astype(np.float64)  # [T, V]
        shifted = logits - logits.max(axis=-1, keepdims=True)  # [T, V]
        ours = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))  # [T, V] log-probabilities
        other = logprobs[f"arr_{n}"]
        assert other.shape == ours.shape
        assert np.abs(ours - other).max() <= TOLERANCE, (texts + ["chat"])[n]
        assert (ours.argmax(-1) == other.argmax(-1)).all()
