"""Decode speed of the embedded engine against llama.cpp on the same GGUFs, both through their OpenAI APIs.

    python mimo-engine/benchmarks/versus_llamacpp.py --models smollm2-135m qwen2.5-coder-0.5b --rounds 3

Starts, for every model, `mimo-engine serve` (its default precision policies, so the default `native` answers;
kernels on every core) and llama-cpp-python's server (threads = cores) on the model's GGUF from the cache. Then, in
rounds, every configuration once: each model, one stream and 8 concurrent streams, on each server (which server goes
first alternates by round), so the machine's drifting load falls on all of them alike. A stream is a greedy streamed
chat reply of up to --max-tokens tokens, to the same prompt every time so that every round decodes the same tokens
(each round keeps its count); both servers may then answer part of the prompt from their prefix caches, so the time
to first token is that of a prompt seen before. One stream's decode rate is its tokens after the first over the time
since the first; 8 streams' are all their tokens after each one's first over the wall time from the first token of
any; time to first token runs from the request (8 streams: the median of theirs). Medians over rounds, every round
kept. Writes the JSON (`mimo.versus-llamacpp/2`) to --out and a bar chart beside it (.png). Needs
`llama-cpp-python[server]` (it builds from source); without it the script says so and exits 3.
"""

from __future__ import annotations

import argparse
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

from mimo_core.console import EXIT_CANNOT_RUN, fail
from mimo_core.provenance import cpu_model, package_version
from mimo_core.server_speed import measure
from mimo_core.settings import load_settings
from mimo_engine.config import DEFAULT_POLICIES
from mimo_engine.pull import ensure_model
from mimo_engine.registry import MODELS

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODELS = ("smollm2-135m", "qwen2.5-coder-0.5b")
PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."
ENGINE, LLAMA = "mimo-engine", "llama.cpp"
STREAMS = (1, 8)
BASELINE = f"{LLAMA}, 1 stream"  # every ratio's denominator
GOALS = {  # ratio name: (its numerator, the goal)
    "engine 1 stream / llama.cpp 1 stream": (f"{ENGINE}, 1 stream", 1.0),
    "engine 8 streams / llama.cpp 1 stream": (f"{ENGINE}, 8 streams", 3.0),
}
WARMUP_TOKENS = 16


def configuration(server: str, streams: int) -> str:
    """A configuration's name, as the JSON keys it: `mimo-engine, 8 streams`."""
    return f"{server}, {streams} stream{'s' * (streams > 1)}"


CONFIGURATIONS = [configuration(server, n) for n in STREAMS for server in (ENGINE, LLAMA)]


def summarize(rounds: list[dict]) -> dict:
    """One model's medians, min..max, times to first token, ratios and goals from its rounds (one dict per
    configuration and round: `configuration`, `decode_tokens_per_s`, `ttft_s`, ...)."""
    def values(name: str, key: str) -> list[float]:
        return [r[key] for r in rounds if r["configuration"] == name]

    medians = {c: statistics.median(values(c, "decode_tokens_per_s")) for c in CONFIGURATIONS}
    ratios = {name: medians[numerator] / medians[BASELINE] for name, (numerator, _) in GOALS.items()}
    return {
        "decode_tokens_per_s": {c: round(m, 2) for c, m in medians.items()},
        "decode_tokens_per_s_range": {c: [round(min(values(c, "decode_tokens_per_s")), 2),
                                          round(max(values(c, "decode_tokens_per_s")), 2)] for c in CONFIGURATIONS},
        "ttft_s": {c: round(statistics.median(values(c, "ttft_s")), 3) for c in CONFIGURATIONS},
        "ratios": {name: round(r, 3) for name, r in ratios.items()},
        "goals_met": {name: ratios[name] >= goal for name, (_, goal) in GOALS.items()},
        "every_round": rounds,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2)
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"versus_llamacpp: the server at {url} did not start") from None
            time.sleep(0.5)


def start_servers(model: str, gguf: Path, threads: int) -> dict[str, tuple[str, subprocess.Popen]]:
    """The engine's and llama.cpp's servers of one model: name -> (base URL, process)."""
    ports = free_port(), free_port()
    commands = {
        ENGINE: [sys.executable, "-m", "mimo_engine", "serve", "--port", str(ports[0]), "--model", model, "--quiet",
                 "--precision-policies", ",".join(DEFAULT_POLICIES), "--threads", str(threads)],
        LLAMA: [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", model,
                "--port", str(ports[1]), "--n_threads", str(threads), "--n_threads_batch", str(threads),
                "--n_ctx", "2048", "--interrupt_requests", "False"],
    }
    return {name: (f"http://127.0.0.1:{port}/v1",
                   subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            for (name, command), port in zip(commands.items(), ports)}


def plot(result: dict, path: Path) -> None:
    """Grouped bars per model: each configuration's median tokens/s with the min..max of its rounds, and each goal
    drawn as a line over the bar it is set for."""
    import matplotlib  # only for the figure

    matplotlib.use("Agg")  # files only: no display
    import matplotlib.pyplot as plt

    models = result["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.5), layout="constrained", squeeze=False)
    for ax, (name, m) in zip(axes[0], models.items()):
        medians, spans = m["decode_tokens_per_s"], m["decode_tokens_per_s_range"]
        x = range(len(CONFIGURATIONS))
        ax.bar(x, [medians[c] for c in CONFIGURATIONS],
               yerr=[[medians[c] - spans[c][0] for c in CONFIGURATIONS], [spans[c][1] - medians[c]
                                                                        for c in CONFIGURATIONS]],
               color=["tab:blue" if c.startswith(ENGINE) else "tab:orange" for c in CONFIGURATIONS], capsize=4)
        for ratio, (numerator, goal) in GOALS.items():
            i = CONFIGURATIONS.index(numerator)
            ax.hlines(goal * medians[BASELINE], i - 0.45, i + 0.45, colors="black", linestyles="dashed")
            ax.annotate(f"{m['ratios'][ratio]:.2f}x (goal {goal:g}x)", (i, goal * medians[BASELINE]),
                        xytext=(0, 4), textcoords="offset points", ha="center", fontsize=8,
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})  # readable over a bar
        ax.set_xticks(list(x), [c.replace(", ", "\n") for c in CONFIGURATIONS], fontsize=8)
        ax.set_ylabel("decode tokens/s (median, min..max of rounds)")
        ax.set_title(name)
    fig.suptitle(f"mimo-engine ({result['engine_policy']}) vs llama.cpp, {result['threads']} threads, "
                 f"{result['cpu_model']}; dashed: goal x llama.cpp 1 stream", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_rounds(parser: argparse.ArgumentParser, out: str, out_help: str = "") -> argparse.Namespace:
    """The arguments after `parser`'s own: --rounds, --max-tokens and --out (default `out`, under the repository)."""
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per reply (default 128)")
    parser.add_argument("--out", type=Path, default=ROOT / out, help=f"the JSON (default: {out}){out_help}")
    args = parser.parse_args()
    if args.rounds < 1 or args.max_tokens < 2:
        parser.error("a rate needs --rounds 1 or more and --max-tokens 2 or more")
    return args


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=sorted(MODELS),
                        metavar="MODEL", help=f"registry models (default: {' '.join(DEFAULT_MODELS)})")
    args = parse_rounds(parser, "mimo-engine/results/versus-llamacpp.json", "; the chart goes beside it")
    if importlib.util.find_spec("llama_cpp") is None:
        fail("llama-cpp-python[server] is not installed (pip install 'llama-cpp-python[server]==0.3.36')",
             EXIT_CANNOT_RUN, prog="versus_llamacpp")
    cache_dir, threads = load_settings().cache_dir, os.cpu_count() or 1
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    ggufs = {model: ensure_model(model, cache_dir) for model in args.models}
    servers = {model: start_servers(model, gguf, threads) for model, gguf in ggufs.items()}
    rounds: dict[str, list[dict]] = {model: [] for model in args.models}
    try:
        for model, by_name in servers.items():
            for url, process in by_name.values():
                wait_ready(url, process)
                for n in STREAMS:  # load the model, compile the kernels
                    measure(url, model, PROMPT, n, WARMUP_TOKENS)
        for r in range(args.rounds):
            for model, by_name in servers.items():
                for n in STREAMS:
                    for name in list(by_name)[:: 1 if r % 2 == 0 else -1]:
                        print(f"versus_llamacpp: round {r + 1}/{args.rounds}, {model}, {configuration(name, n)}",
                              file=sys.stderr)
                        rate, ttft, tokens = measure(by_name[name][0], model, PROMPT, n, args.max_tokens)
                        rounds[model].append({"round": r + 1, "configuration": configuration(name, n),
                                              "decode_tokens_per_s": round(rate, 3), "ttft_s": round(ttft, 4),
                                              "tokens": tokens, "load_average_1m": round(os.getloadavg()[0], 2)})
    finally:
        for by_name in servers.values():
            for _, process in by_name.values():
                process.terminate()
                process.wait(timeout=30)
    result = {
        "schema": "mimo.versus-llamacpp/2", "rounds": args.rounds, "max_tokens": args.max_tokens, "prompt": PROMPT,
        "engine_policy": DEFAULT_POLICIES[0], "llama_cpp_python": package_version("llama_cpp_python"),
        "threads": threads, "cpu_model": cpu_model(),
        "goals": {name: goal for name, (_, goal) in GOALS.items()},
        "models": {model: {"gguf": gguf.name, **summarize(rounds[model])} for model, gguf in ggufs.items()},
        "load_average": {"start": load_at_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "created_at": time.time(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    for model, m in result["models"].items():
        print(f"{model}: " + ", ".join(f"{c} {m['decode_tokens_per_s'][c]} tok/s" for c in CONFIGURATIONS)
              + "; " + ", ".join(f"{name} {r}x (goal {GOALS[name][1]}x)" for name, r in m["ratios"].items()))
    print(f"written to {args.out} and {args.out.with_suffix('.png').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
