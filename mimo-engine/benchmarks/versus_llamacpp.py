"""Decode speed of the embedded engine against llama.cpp on the same GGUF, both through their OpenAI APIs.

    python mimo-engine/benchmarks/versus_llamacpp.py --model smollm2-135m --out precision-router/results/versus-llamacpp.json

Starts `mimo-engine serve` (default policy: native) and llama-cpp-python's server on the model's GGUF from the cache,
then, in interleaved rounds (the machine's load drifts): one stream on each, then 8 concurrent streams on each.
A stream's decode rate is its tokens after the first over the time since the first; 8 streams are measured as all
their tokens over the wall time from the first token of any. Medians over rounds. Needs `llama-cpp-python[server]`
(it builds from source); without it the script says so and exits 3.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai

from mimo_core.settings import load_settings
from mimo_engine.pull import ensure_model

PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."
MAX_TOKENS = 128


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2)
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server at {url} did not start") from None
            time.sleep(0.5)


async def stream(client: openai.AsyncOpenAI, model: str) -> tuple[float | None, float, int]:
    """(time of the first token, time of the last, tokens) of one greedy streamed reply."""
    first, tokens = None, 0
    response = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}],
                                                    max_tokens=MAX_TOKENS, temperature=0.0, stream=True)
    async for chunk in response:
        if chunk.choices and chunk.choices[0].delta.content:
            tokens += 1
            first = first or time.perf_counter()
    return first, time.perf_counter(), tokens


async def decode_rate(url: str, model: str, streams: int) -> float:
    """Decode tokens/s of `streams` concurrent replies: tokens after the first over the time since the first."""
    client = openai.AsyncOpenAI(base_url=url, api_key="not-needed", max_retries=0, timeout=600)
    results = await asyncio.gather(*(stream(client, model) for _ in range(streams)))
    start = min(first for first, _, _ in results if first is not None)
    end = max(last for _, last, _ in results)
    return (sum(n for _, _, n in results) - streams) / (end - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if importlib.util.find_spec("llama_cpp") is None:
        print("versus_llamacpp: llama-cpp-python[server] is not installed (pip install "
              "'llama-cpp-python[server]==0.3.36')", file=sys.stderr)
        return 3
    gguf = ensure_model(args.model, load_settings().cache_dir)
    threads = str(os.cpu_count() or 1)
    ports = free_port(), free_port()
    servers = {
        "mimo-engine": subprocess.Popen([sys.executable, "-m", "mimo_engine", "serve", "--port", str(ports[0]),
                                         "--model", args.model, "--quiet"], stderr=subprocess.DEVNULL),
        "llama.cpp": subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
                                       "--model_alias", args.model, "--port", str(ports[1]), "--n_threads", threads,
                                       "--n_ctx", "2048", "--interrupt_requests", "False"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    }
    urls = dict(zip(servers, (f"http://127.0.0.1:{p}/v1" for p in ports)))
    try:
        for name, process in servers.items():
            wait_ready(urls[name], process)
            asyncio.run(decode_rate(urls[name], args.model, 1))  # load the model, compile the kernels
        rates: dict[str, list[float]] = {f"{name}, {n} stream{'s' * (n > 1)}": [] for n in (1, 8) for name in urls}
        for _ in range(args.rounds):
            for n in (1, 8):
                for name, url in urls.items():
                    rates[f"{name}, {n} stream{'s' * (n > 1)}"].append(asyncio.run(decode_rate(url, args.model, n)))
    finally:
        for process in servers.values():
            process.terminate()
            process.wait(timeout=30)
    medians = {key: round(statistics.median(values), 2) for key, values in rates.items()}
    single = medians["llama.cpp, 1 stream"]
    result = {
        "schema": "mimo.versus-llamacpp/1", "model": args.model, "gguf": gguf.name, "rounds": args.rounds,
        "max_tokens": MAX_TOKENS, "decode_tokens_per_s": medians, "every_round": rates,
        "ratios": {"engine 1 stream / llama.cpp 1 stream": round(medians["mimo-engine, 1 stream"] / single, 3),
                   "engine 8 streams / llama.cpp 1 stream": round(medians["mimo-engine, 8 streams"] / single, 3)},
        "targets": {"engine 1 stream / llama.cpp 1 stream": 0.75, "engine 8 streams / llama.cpp 1 stream": 2.5},
        "llama_cpp_threads": int(threads), "load_average": [round(x, 2) for x in os.getloadavg()],
        "created_at": time.time(),
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
