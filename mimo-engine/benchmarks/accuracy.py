"""How far the engine's default policy and llama.cpp are from float32 on the same GGUF: prompt log-probabilities.

    python mimo-engine/benchmarks/accuracy.py --models smollm2-135m qwen2.5-coder-0.5b

The reference is the engine's own `f32` policy (the GGUF's weights dequantized to float32; check_reference.py holds
it to transformers within 2e-3 of a logit). Each text is tokenized once, by the engine's tokenizer, and every backend
gets those ids: neither GGUF asks for a BOS token and none is added, so positions align (`tokenized_alike` says
whether llama.cpp's own tokenizer, BOS included, gives the same ids). Per model: the largest and mean |log-probability
of each prompt token - float32's| over every position of PROMPTS, for the engine's default policy (`native`) and for
llama.cpp, and the perplexity of precision-router/results/heldout.txt (in windows of the model's context) of all
three. Verdicts: the default is no further from float32 than llama.cpp (both the max and the mean), and its
perplexity is within 0.5% of float32's. llama.cpp runs through llama-cpp-python's `Llama` with logits at every
position, threads = cores, its own defaults otherwise (an f16 KV cache); without llama-cpp-python the script says so
and exits 3.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from mimo_core.console import EXIT_CANNOT_RUN, fail
from mimo_core.provenance import cpu_model, package_version
from mimo_core.settings import load_settings
from mimo_engine.config import DEFAULT_POLICIES
from mimo_engine.pull import ensure_model
from mimo_engine.registry import MODELS
from mimo_engine.runtime import BLOCK_SIZE, EngineCore, LoadedModel
from mimo_engine.sampling import log_softmax
from mimo_engine.sweep import token_logprobs

ROOT = Path(__file__).resolve().parents[2]
HELDOUT = ROOT / "precision-router/results/heldout.txt"
DEFAULT_MODELS = ("smollm2-135m", "qwen2.5-coder-0.5b")
PERPLEXITY_TOLERANCE = 0.005  # the default's perplexity may differ from float32's by this fraction
PROMPTS = {
    "prose": "The lighthouse stood at the end of a long breakwater, and every evening the keeper climbed its ninety "
             "steps to trim the wick, wind the clockwork and write the weather in a book nobody else ever read.",
    "code": "def merge_sorted(a: list[int], b: list[int]) -> list[int]:\n    out, i, j = [], 0, 0\n"
            "    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n            out.append(a[i]); i += 1\n"
            "        else:\n            out.append(b[j]); j += 1\n    return out + a[i:] + b[j:]\n",
    "math": "Question: A train leaves at 9:40 and arrives at 13:05. How long is the journey in minutes? Answer: From "
            "9:40 to 12:40 is 3 hours, or 180 minutes, and 12:40 to 13:05 is 25 minutes, so 180 + 25 = 205 minutes.",
    "json": '{"tool": "search_flights", "arguments": {"from": "LIS", "to": "OSL", "date": "2025-03-14", '
            '"passengers": 2, "cabin": "economy", "max_stops": 1}}',
    "french": "Le marché ouvre à six heures : les maraîchers déchargent leurs cagettes de poireaux, les fromagers "
              "installent leurs meules et l'odeur du pain chaud traverse la place encore froide.",
    "chat": None,  # the model's own chat template around a question and its answer: control tokens included
}
CHAT = [{"role": "user", "content": "Name three prime numbers and say why 9 is not one."},
        {"role": "assistant", "content": "2, 3 and 5 are prime. 9 is not prime because it is 3 times 3."}]


def texts(model: LoadedModel, heldout: str) -> dict[str, str]:
    """Every prompt's text (the chat one in the model's own template) and the held-out text."""
    return dict(PROMPTS, chat=model.tokenizer.render_chat(CHAT, add_generation_prompt=False), heldout=heldout)


def windows(ids: list[int], size: int) -> dict[str, list[int]]:
    """A long text's token ids in consecutive windows of at most `size` (the model's context)."""
    return {f"heldout[{i // size}]": ids[i : i + size] for i in range(0, len(ids), size)}


def engine_logprobs(model: LoadedModel, sequences: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """Each sequence's prompt-token log-probabilities under the model's default policy, one prefill each."""
    out = {}
    for label, ids in sequences.items():
        core = EngineCore(model, num_blocks=-(-len(ids) // BLOCK_SIZE))
        out[label] = token_logprobs(log_softmax(core.prefill(label, ids, "all", reuse=False)), ids)
    return out


def llama_logprobs(gguf: Path, sequences: dict[str, list[int]], encoded: dict[str, tuple[str, list[int]]],
                   threads: int) -> tuple[dict[str, np.ndarray], dict[str, bool]]:
    """Each sequence's prompt-token log-probabilities from llama.cpp fed the same ids, and for each text of `encoded`
    whether llama.cpp's own tokenizer (with the BOS it would add) gives the engine's ids."""
    from llama_cpp import Llama  # optional: main() checks that it is installed

    llm = Llama(model_path=str(gguf), n_ctx=max(map(len, sequences.values())), n_threads=threads,
                n_threads_batch=threads, logits_all=True, verbose=False)
    out = {}
    for label, ids in sequences.items():
        llm.reset()
        llm.eval(ids)
        out[label] = token_logprobs(log_softmax(llm.scores[: len(ids)]), ids)
    alike = {label: llm.tokenize(text.encode(), add_bos=True, special=True) == ids
             for label, (text, ids) in encoded.items()}
    return out, alike


def logprob_difference(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, float]:
    """The largest and mean |other - reference| over every position of every sequence of `reference`."""
    diff = np.abs(np.concatenate([other[label] - reference[label] for label in reference]))
    return {"max": float(diff.max()), "mean": float(diff.mean())}


def perplexity_of(logprobs: list[np.ndarray]) -> float:
    """exp of the mean negative log-likelihood over every token of every window."""
    return float(np.exp(-np.concatenate(logprobs).mean()))


def model_report(prompts: list[str], heldout: list[str], f32: dict[str, np.ndarray], default: dict[str, np.ndarray],
                 llama: dict[str, np.ndarray]) -> dict:
    """One model's figures and verdicts from each backend's prompt-token log-probabilities by sequence label."""
    def only(logprobs: dict[str, np.ndarray], labels: list[str]) -> dict[str, np.ndarray]:
        return {label: logprobs[label] for label in labels}

    differences = {"default": logprob_difference(only(f32, prompts), only(default, prompts)),
                   "llama.cpp": logprob_difference(only(f32, prompts), only(llama, prompts))}
    ppl = {name: perplexity_of([logprobs[label] for label in heldout])
           for name, logprobs in (("f32", f32), ("default", default), ("llama.cpp", llama))}
    relative = {name: ppl[name] / ppl["f32"] - 1 for name in ("default", "llama.cpp")}
    return {
        "prompt_positions": sum(len(f32[label]) for label in prompts),
        "heldout_positions": sum(len(f32[label]) for label in heldout),
        "logprob_abs_difference": differences,
        "perplexity": ppl,
        "perplexity_relative_difference": relative,
        "verdicts": {
            "default_no_further_than_llama_cpp": all(differences["default"][k] <= differences["llama.cpp"][k]
                                                     for k in ("max", "mean")),
            "default_perplexity_within_tolerance": abs(relative["default"]) <= PERPLEXITY_TOLERANCE,
        },
    }


def measure(name: str, cache_dir: Path, heldout: str, threads: int) -> dict:
    """Load `name` under float32 and the default policy, run llama.cpp on its GGUF, and report (see model_report)."""
    gguf = ensure_model(name, cache_dir)
    f32_model = LoadedModel.load(name, cache_dir, policies=("f32",), threads=threads)
    encoded = {label: (text, f32_model.tokenizer.encode(text)) for label, text in texts(f32_model, heldout).items()}
    prompts = {label: ids for label, (_, ids) in encoded.items() if label in PROMPTS}
    sequences = {**prompts, **windows(encoded["heldout"][1], f32_model.config.context_length)}
    f32 = engine_logprobs(f32_model, sequences)
    del f32_model  # one model's weights in memory at a time
    # The default policy alone: the formats it reads are the same whichever other policies a server holds
    default = engine_logprobs(LoadedModel.load(name, cache_dir, policies=DEFAULT_POLICIES[:1], threads=threads),
                              sequences)
    llama, alike = llama_logprobs(gguf, sequences, encoded, threads)
    return {"gguf": gguf.name, "default_policy": DEFAULT_POLICIES[0], "tokenized_alike": alike,
            **model_report(list(prompts), [label for label in sequences if label not in prompts], f32, default, llama)}


def table(models: dict[str, dict]) -> str:
    """The figures as a few aligned lines for a terminal."""
    lines = [(f"{'model':<20} {'|dlogp| max default/llama':>26} {'mean default/llama':>20} "
              f"{'ppl f32/default/llama':>24} {'default ppl':>11}  verdicts")]
    for name, m in models.items():
        d, p = m["logprob_abs_difference"], m["perplexity"]
        lines.append(f"{name:<20} {d['default']['max']:>12.4f} / {d['llama.cpp']['max']:<11.4f} "
                     f"{d['default']['mean']:>9.5f} / {d['llama.cpp']['mean']:<8.5f} "
                     f"{p['f32']:>7.3f} / {p['default']:.3f} / {p['llama.cpp']:<7.3f} "
                     f"{100 * m['perplexity_relative_difference']['default']:>+10.2f}%  "
                     + ", ".join(f"{k}={v}" for k, v in m["verdicts"].items()))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=sorted(MODELS),
                        metavar="MODEL", help=f"registry models (default: {' '.join(DEFAULT_MODELS)})")
    parser.add_argument("--out", type=Path, default=ROOT / "mimo-engine/results/accuracy.json",
                        help="the JSON (default: mimo-engine/results/accuracy.json)")
    args = parser.parse_args()
    if importlib.util.find_spec("llama_cpp") is None:
        fail("llama-cpp-python is not installed (pip install 'llama-cpp-python==0.3.36')", EXIT_CANNOT_RUN,
             prog="accuracy")
    cache_dir, threads = load_settings().cache_dir, os.cpu_count() or 1
    heldout = HELDOUT.read_text(encoding="utf-8")
    models = {}
    for name in args.models:
        print(f"accuracy: {name}", file=sys.stderr)
        models[name] = measure(name, cache_dir, heldout, threads)
    result = {
        "schema": "mimo.engine-accuracy/1", "reference": "mimo-engine f32 policy", "heldout": HELDOUT.name,
        "prompts": list(PROMPTS), "perplexity_tolerance": PERPLEXITY_TOLERANCE, "models": models,
        "llama_cpp_python": package_version("llama_cpp_python"), "cpu_model": cpu_model(), "threads": threads,
        "load_average": [round(x, 2) for x in os.getloadavg()], "created_at": time.time(),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(models))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
