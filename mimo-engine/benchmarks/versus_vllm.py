"""Decode speed and time to first token of the embedded engine in float32 against a vLLM server on the same model.

    python mimo-engine/benchmarks/versus_vllm.py --vllm-url http://127.0.0.1:8000/v1 --model smollm2-135m

vLLM must already serve `mimo-engine export-hf MODEL`'s folder under the name MODEL, in float32 (README: "Running on
vLLM"). The script starts `mimo-engine serve --precision-policies f32` (the weights that folder holds, so both
compute in float32) with kernels on every core, then in rounds measures each server with one stream and 8 concurrent
streams (which goes first alternates by round), as versus_llamacpp.py does: greedy streamed chat replies to one
prompt, decode tokens/s after each stream's first token, time to first token from the request (a prompt seen in
earlier rounds: both servers may answer part of it from their prefix caches). Medians over rounds, every round kept,
in the JSON at --out (`mimo.versus-vllm/1`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from mimo_core.provenance import cpu_model
from mimo_core.server_speed import measure
from mimo_engine.registry import MODELS
from versus_llamacpp import PROMPT, STREAMS, WARMUP_TOKENS, configuration, free_port, parse_rounds, wait_ready

ENGINE, VLLM = "mimo-engine f32", "vLLM"


def vllm_version(url: str) -> str | None:
    """The version vLLM's /version reports (None where it answers none)."""
    try:
        with urllib.request.urlopen(url.removesuffix("/v1") + "/version", timeout=5) as response:
            return json.load(response).get("version")
    except (OSError, ValueError):
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vllm-url", required=True, help="vLLM's OpenAI base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default="smollm2-135m", choices=sorted(MODELS),
                        help="the registry model both serve (vLLM under this name; default smollm2-135m)")
    args = parse_rounds(parser, "mimo-engine/results/versus-vllm.json")
    threads, load_at_start = os.cpu_count() or 1, [round(x, 2) for x in os.getloadavg()]
    port = free_port()
    engine = subprocess.Popen([sys.executable, "-m", "mimo_engine", "serve", "--port", str(port), "--model",
                               args.model, "--quiet", "--precision-policies", "f32", "--threads", str(threads)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    urls = {ENGINE: f"http://127.0.0.1:{port}/v1", VLLM: args.vllm_url}
    rounds: list[dict] = []
    try:
        wait_ready(urls[ENGINE], engine)
        for url in urls.values():
            for n in STREAMS:  # load the model, compile the kernels
                measure(url, args.model, PROMPT, n, WARMUP_TOKENS)
        for r in range(args.rounds):
            for n in STREAMS:
                for name in list(urls)[:: 1 if r % 2 == 0 else -1]:
                    print(f"versus_vllm: round {r + 1}/{args.rounds}, {configuration(name, n)}", file=sys.stderr)
                    rate, ttft, tokens = measure(urls[name], args.model, PROMPT, n, args.max_tokens)
                    rounds.append({"round": r + 1, "configuration": configuration(name, n),
                                   "decode_tokens_per_s": round(rate, 3), "ttft_s": round(ttft, 4), "tokens": tokens,
                                   "load_average_1m": round(os.getloadavg()[0], 2)})
    finally:
        engine.terminate()
        engine.wait(timeout=30)

    def values(name: str, key: str) -> list[float]:
        return [r[key] for r in rounds if r["configuration"] == name]

    names = [configuration(name, n) for n in STREAMS for name in urls]
    result = {
        "schema": "mimo.versus-vllm/1", "model": args.model, "rounds": args.rounds, "max_tokens": args.max_tokens,
        "prompt": PROMPT, "engine_policy": "f32", "vllm_version": vllm_version(args.vllm_url), "threads": threads,
        "cpu_model": cpu_model(),
        "decode_tokens_per_s": {c: round(statistics.median(values(c, "decode_tokens_per_s")), 2) for c in names},
        "ttft_s": {c: round(statistics.median(values(c, "ttft_s")), 3) for c in names},
        "every_round": rounds,
        "load_average": {"start": load_at_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "created_at": time.time(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(", ".join(f"{c}: {result['decode_tokens_per_s'][c]} tok/s, first token {result['ttft_s'][c]} s"
                    for c in names))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
