"""Compare the engine's logits with an independent implementation: transformers on CPU loading the same GGUF.

Run it in a separate virtual environment (see ../requirements-reference.txt), from the repository root:
    /tmp/refvenv/bin/python mimo-engine/scripts/check_reference.py --model smollm2-135m

Both sides get the same token ids (the tokenizer has its own tests) and return logits at every position. Prints JSON
with, per prompt, the largest absolute logit difference and whether the argmax agrees at every position; exits 1
when a prompt is outside the tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from mimo_core.settings import load_settings
from mimo_engine.pull import ensure_model
from mimo_engine.runtime import BLOCK_SIZE, EngineCore, LoadedModel

# Both sides compute in float32 but sum in different orders (BLAS blocking, fused q/k/v, rope layout), so logits of
# magnitude ~10-30 may differ in the last few bits; anything past this bound would be a real bug.
TOLERANCE = 2e-3
CHUNK = 100  # tokens per forward pass of the long prompt: not a multiple of the block size
PROMPTS = {
    "english": "The capital of France is Paris. It is known for the Eiffel Tower, the Louvre and its cafés.",
    "code": "def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "math": "Question: What is 12 * 8? Answer: 12 * 8 = 96. Question: What is 7 + 15? Answer:",
    "chat": None,  # the model's own chat template around a question
    "long": None,  # computed in chunks that cross block boundaries, so the chunked prefill is compared too
}


def compare(name: str, cache_dir: Path) -> dict:
    """Max abs logit difference and argmax agreement per prompt for registry model `name`."""
    path = ensure_model(name, cache_dir)
    started = time.perf_counter()
    engine = LoadedModel.load(name, cache_dir, policies=("f32",))  # float32 weights, as the reference computes
    reference = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    load_s = time.perf_counter() - started
    chat = engine.tokenizer.render_chat([{"role": "user", "content": "Name three prime numbers."}])
    prompts = dict(PROMPTS, chat=chat, long=" ".join([PROMPTS["english"], PROMPTS["code"], PROMPTS["math"]] * 8))
    results = {}
    for label, text in prompts.items():
        ids = engine.tokenizer.encode(text)
        core = EngineCore(engine, num_blocks=len(ids) // BLOCK_SIZE + 1)
        ours = core.prefill(0, ids, "all", reuse=False, chunk=CHUNK if label == "long" else None)  # [T, V]
        with torch.no_grad():
            theirs = reference(torch.tensor([ids])).logits[0].float().numpy()  # [T, V]
        diff = float(np.abs(ours - theirs).max())
        results[label] = {
            "tokens": len(ids),
            "max_abs_diff": diff,
            "max_abs_logit": float(np.abs(theirs).max()),
            "argmax_agreement": float((ours.argmax(-1) == theirs.argmax(-1)).mean()),
            "within_tolerance": diff <= TOLERANCE,
        }
    return {"model": name, "load_s": round(load_s, 1), "tolerance": TOLERANCE, "prompts": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="registry model name (repeatable; default smollm2-135m)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="model cache (default: MIMO_CACHE_DIR)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    args = parser.parse_args()
    torch.set_num_threads(2)
    cache_dir = args.cache_dir or load_settings().cache_dir
    report = [compare(name, cache_dir) for name in args.model or ["smollm2-135m"]]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if all(p["within_tolerance"] and p["argmax_agreement"] == 1.0 for r in report for p in r["prompts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
