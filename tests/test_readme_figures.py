"""Every figure in a README table comes from a committed results file, to the digits printed.

A README table of measured figures is preceded by a marker naming how its rows are derived and the files they come
from: `<!-- figures: NAME FILE [FILE ...] -->`. `TABLES[NAME]` derives the expected rows from those files (loaded
as JSON, or JSON lines), and the test compares them with the table as printed: a text cell must contain the
expected text, a number must round to the digits printed. A table that carries figures without such a marker fails,
unless its marker says why it has no results file (`<!-- figures: none: REASON -->`: a format's layout, a spec).
Each marker's files must also be named in the README's visible text near the table, so a reader can find them.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from ds_benchmark.results import MECHANISMS, Configuration

ROOT = Path(__file__).resolve().parents[1]
READMES = sorted([ROOT / "README.md", *ROOT.glob("*/README.md")])
MARKER = re.compile(r"<!--\s*figures:\s*(.*?)\s*-->")
NUMBER = re.compile(r"(?<![\w.@])[-+−]?\d+(?:,\d{3})*(?:\.\d+)?(?:e[-+]?\d+)?")
HAS_FIGURE = re.compile(r"(?<![\w.-])\d+\.\d+(?![\w.-])|\d%|(?<![\w.])\d+(?:\.\d+)?x\b")  # not in names: qwen2.5-coder
NEAR_LINES = 40  # how far above a table (or 25 below) its files must be named in the text

Row = list[Any]  # per cell: str (contained in the cell), a number, a tuple of numbers, or None (not checked)


# ------------------------------------------------------------------------------------------------ reading READMEs


@dataclass
class Table:
    readme: Path
    line: int  # 1-based line of the header
    marker: str | None
    rows: list[list[str]]  # body rows, cells stripped


def _cells(line: str) -> list[str]:
    """A markdown row's cells; a `|` inside backticks belongs to the cell."""
    cells, current, in_code = [], "", False
    for char in line.strip().strip("|"):
        if char == "`":
            in_code = not in_code
        if char == "|" and not in_code:
            cells.append(current.strip())
            current = ""
        else:
            current += char
    return [*cells, current.strip()]


def tables(readme: Path) -> list[Table]:
    """The markdown tables of a README with the marker just above each (if any)."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|[-:| ]+\|$", lines[i + 1]):
            above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = MARKER.fullmatch(above.strip())
            body = []
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                body.append(_cells(lines[j]))
                j += 1
            found.append(Table(readme, i + 1, marker.group(1) if marker else None, body))
            i = j
        else:
            i += 1
    return found


def _number(text: str) -> tuple[float, float]:
    """A printed number and half a unit of its last printed digit (the rounding it allows)."""
    text = text.replace(",", "").replace("−", "-")
    mantissa, _, exponent = text.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return float(text), 0.5 * 10.0 ** (int(exponent or 0) - decimals)


def check_cell(printed: str, expected: Any) -> str | None:
    """Why `printed` does not show `expected`, or None."""
    if expected is None:
        return None
    if isinstance(expected, str):
        plain = printed.replace("`", "")
        return None if expected.replace("`", "") in plain else f"{printed!r} does not say {expected!r}"
    wanted = list(expected) if isinstance(expected, (tuple, list)) else [expected]
    shown = NUMBER.findall(printed)
    if len(shown) != len(wanted):
        return f"{printed!r} shows {len(shown)} numbers, expected {len(wanted)}: {wanted}"
    for text, value in zip(shown, wanted):
        number, slack = _number(text)
        if value is None or abs(number - value) > slack * (1 + 1e-9) + 1e-12:
            return f"{printed!r}: {text} is not {value} to the digits printed"
    return None


# ------------------------------------------------------------------------------------------------ derivations


def _load(path: Path) -> Any:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


def _runs(data: dict) -> dict[tuple, dict]:
    """A speculation bench's runs by (prompt set, batch, method, adaptive); plain runs are listed twice."""
    return {(r["prompt_set"], r["batch"], r["method"], r["adaptive"]): r for r in data["runs"] if r["method"] != "none"}


SETS = ("coding", "math", "agent")


def _accepted(data: dict, method: str) -> tuple:
    runs = _runs(data)
    return tuple(runs[(s, 1, method, False)]["speculation"]["mean_accepted_length"] for s in SETS)


def _speedup(data: dict, method: str, batch: int, adaptive: bool) -> tuple:
    runs = _runs(data)
    return tuple(runs[(s, batch, method, adaptive)]["speedup"] for s in SETS)


def _plain_spread(data: dict, batch: int) -> tuple:
    """The two plain runs of each prompt set as (low, high) speedups against their mean."""
    out: list[float] = []
    for s in SETS:
        plain = sorted(r["speedup"] for r in data["runs"] if r["method"] == "none" and r["prompt_set"] == s
                       and r["batch"] == batch)
        out += [plain[0], plain[-1]]
    return tuple(out)


def speculation_summary(small: dict, large: dict) -> list[Row]:
    """README.md: accepted length and adaptive speedups, batch 1 and 8, per drafter."""
    rows = [["DFlash", tuple(small["dflash_accepted_length"][s] for s in SETS), None, None]]
    for data, methods in ((small, ("ngram", "suffix", "self-mxfp4")), (large, ("draft-model",))):
        for method in methods:
            rows.append([f"`{method}`", _accepted(data, method), _speedup(data, method, 1, True),
                         _speedup(data, method, 8, True)])
    return rows


def speculation_table(small: dict, large: dict) -> list[Row]:
    """mimo-engine/README.md: the acceptance table, full block and adaptive, batch 1 and 8."""
    rows: list[Row] = [["DFlash", tuple(small["dflash_accepted_length"][s] for s in SETS), None, None, None, None]]
    for data, methods in ((small, ("ngram", "suffix", "self-mxfp4")), (large, ("draft-model", "ngram", "suffix"))):
        if data is large:
            rows.append(["qwen2.5-coder-1.5b", None, None, None, None, None])
        for method in methods:
            rows.append([f"`{method}`", _accepted(data, method), *(_speedup(data, method, b, a)
                                                                  for b in (1, 8) for a in (False, True))])
        rows.append(["plain decoding", None, _plain_spread(data, 1), None, _plain_spread(data, 8), None])
    return rows


def _configuration(results: dict, name: str) -> dict:
    return next(c for c in results["configurations"] if c["name"] == name)


ABLATION_ORDER = ["full", *(f"without {c}" for c in ("precision-router", "tiered-kv-cache", "spec-reasoner",
                                                     "multi-agent-orchestrator"))]


def ablation_table(results: dict) -> list[Row]:
    """README.md: the ablation, one row per configuration, with the mechanism figures of its calls."""
    rows = []
    for name in ABLATION_ORDER:
        c = _configuration(results, name)
        f, mechanism = c["figures"], Configuration.from_dict(c).mechanism()
        rows.append([name, f["correct"], f["overconfident_wrong"], f["wall_s"], f["tokens_per_s"], f["ds"],
                     *("-" if mechanism[m] is None else mechanism[m] for m in MECHANISMS)])
    return rows


def ablation_impact(results: dict) -> list[Row]:
    """README.md: the ablation's component impact table, in the report's order."""
    return [[i["component"], i["ds_drop"], tuple(i["ds_drop_ci95"]), i["accuracy_drop"], i["tokens_per_s_drop"]]
            for i in results["impact"]]


def benchmark_runs(*results: dict) -> list[Row]:
    """README.md: single-configuration runs of one benchmark (a backend or a concurrency each, the marker's files in
    order; the first cell names the run in words): right, D/s, model-work seconds, generated tokens/s, the median
    record's latency, and the mechanism figures of its calls."""
    rows = []
    for run in results:
        (c,) = run["configurations"]
        f, mechanism = c["figures"], Configuration.from_dict(c).mechanism()
        rows.append([None, f["correct"], f["ds"], f["wall_s"], f["tokens_per_s"], f["latency_s"]["p50"],
                     *("-" if mechanism[m] is None else mechanism[m] for m in MECHANISMS)])
    return rows


def versus_vllm(data: dict) -> list[Row]:
    """README.md: the engine in float32 against vLLM on the same model: decode tokens/s and time to first token, one
    stream and 8, one row per server."""
    speeds, firsts = data["decode_tokens_per_s"], data["ttft_s"]
    return [[server, speeds[f"{server}, 1 stream"], speeds[f"{server}, 8 streams"], firsts[f"{server}, 1 stream"],
             firsts[f"{server}, 8 streams"]] for server in ("mimo-engine f32", "vLLM")]


def _points(sweep: dict) -> dict[str, dict]:
    return {p["policy"]: p for p in sweep["points"]}


def sweep_summary(sweep: dict) -> list[Row]:
    """README.md: a few policies of qwen2.5-coder-0.5b's sweep (perplexity as a change from float32)."""
    points = _points(sweep)
    f32 = points["f32"]
    rows = [["float32", f32["bits_per_weight"], (1, f32["perplexity"]), f32["decode_tokens_per_s"]]]
    for label, policy in (("`native`", "q8_0"), ("`experts-mxfp4`", "experts-mxfp4"),
                          ("`entropy@5.5`", "entropy@5.5"), ("`mxfp4`", "mxfp4")):
        p = points[policy]
        rows.append([label, p["bits_per_weight"], 100 * (p["perplexity_ratio"] - 1), p["decode_tokens_per_s"]])
    return rows


def sweep_table(small: dict, large: dict) -> list[Row]:
    """precision-router/README.md: every policy of both sweeps."""
    rows = []
    for policy in ("f32", "bf16", "q8_0", "mxfp8", "experts-mxfp4", "mxfp4", "entropy@7", "entropy@6", "entropy@5.5",
                   "entropy@5"):
        row: Row = [policy]
        for sweep in (small, large):
            p = _points(sweep)[policy]
            ratio = (1, p["perplexity"]) if policy == "f32" else p["perplexity_ratio"]
            row += [p["bits_per_weight"], ratio, p["mean_kl"], p["decode_tokens_per_s"]]
        rows.append(row)
    return rows


def versus_llamacpp(data: dict) -> list[Row]:
    """precision-router/README.md: per model, decode tok/s of the engine and llama.cpp at 1 and 8 streams, and the
    engine's ratios to llama.cpp's single stream with their goals."""
    rows = []
    for model, figures in data["models"].items():
        speeds = figures["decode_tokens_per_s"]
        rows.append([model, *(speeds[f"{name}, {n}"] for n in ("1 stream", "8 streams")
                              for name in ("mimo-engine", "llama.cpp")),
                     *((figures["ratios"][ratio], goal) for ratio, goal in data["goals"].items())])
    return rows


ORCHESTRATOR_ROWS = ("1 agents, majority", "3 agents, majority", "5 agents, majority", "5 agents, weighted",
                     "8 agents, majority", "8 agents, majority, early stop (replayed)",
                     "8 agents, weighted, early stop (live)")


def orchestrator_bench(bench: dict) -> list[Row]:
    """multi-agent-orchestrator/README.md: the bench's configurations (the chosen vote is `weighted`)."""
    configurations = {c["name"]: c for c in bench["configurations"]}
    rows = []
    for name in ORCHESTRATOR_ROWS:
        c = configurations[name]
        rows.append([name, (sum(c["correct"]), len(c["correct"])), c["ds"], c["overconfident_wrong"],
                     c["calibration_error"], c["tokens"], c["wall_s"]])
    return rows


def spec_bench(bench: dict) -> list[Row]:
    """spec-reasoner/README.md: one row per arm (prompt tokens with the cached ones in brackets, where reported)."""
    rows = []
    for arm in bench["arms"]:
        plain = arm["arm"] == "oracle-only"
        times = arm["time_s"]
        tokens = (arm["draft_tokens"], arm["oracle_tokens"], arm["prompt_tokens"],
                  *([arm["cached_tokens"]] if "cached_tokens" in arm else []))
        rows.append([arm["arm"], arm["n"], (arm["accuracy"], *arm["accuracy_ci95"]),
                     None if plain else (arm["accuracy_delta"], *arm["accuracy_delta_ci95"]), arm["wall_s"],
                     arm["speedup"] if plain else (arm["speedup"], *arm["speedup_ci95"]),
                     None if plain else arm["acceptance_rate"], (times["draft"], times["verify"], times["oracle"]),
                     tokens])
    return rows


def kv_bench(bench: dict) -> list[Row]:
    """tiered-kv-cache/README.md: 8 agents on one record, reuse off and on."""
    off, on = bench["off"][: bench["agents"]], bench["on"][: bench["agents"]]
    return [
        ["prompt tokens prefilled", sum(a["prefilled_tokens"] for a in off), sum(a["prefilled_tokens"] for a in on)],
        ["agent 1", off[0]["ttft_s"], on[0]["ttft_s"]],
        ["agents 2..8", statistics.median(a["ttft_s"] for a in off[1:]),
         statistics.median(a["ttft_s"] for a in on[1:])],
    ]


def kv_sizing(sizing: dict) -> list[Row]:
    """tiered-kv-cache/README.md: hit rate against hbm capacity, per policy."""
    rows = []
    for label, key in (("lru", "lru, hbm only"), ("slru", "slru, hbm only"), ("s3fifo", "s3fifo, hbm only"),
                       ("lru + dram", "lru, dram 4x hbm")):
        rows.append([label, *(100 * point["hit_rate"] for point in sizing["figures"][key])])
    return rows


def reference(runs: list[dict]) -> list[Row]:
    """README.md: the engine's float32 logits against transformers on the same GGUF, per model."""
    rows = []
    for run in runs:
        prompts = run["prompts"].values()
        diffs = [p["max_abs_diff"] for p in prompts]
        rows.append([f"`{run['model']}`", (min(diffs), max(diffs)),
                     100 * min(p["argmax_agreement"] for p in prompts)])
    return rows


STEP_LABELS = {4096: "4096", 256: "256", 128: "128", 64: "64"}


def interference(*runs: dict) -> list[Row]:
    """README.md: decoding streams' inter-token latency while a long prompt is prefilled, per step budget."""
    return [[str(run["step_tokens"]), (run["itl_ms"]["p50"], run["itl_ms"]["p99"]), run["long_prompt_ttft_s"]]
            for run in runs]


def interference_stall(*files: list[dict]) -> list[Row]:
    """README.md: a running stream's worst gap while a long prompt is prefilled, per stream count and per file (one
    way of sizing steps each, run in interleaved rounds): medians over the file's runs, and how many met the goal."""
    rows = []
    for streams in sorted({run["streams"] for runs in files for run in runs}):
        for runs in files:
            mine = [run for run in runs if run["streams"] == streams]

            def median(figure: Callable[[dict], float], mine: list[dict] = mine) -> float:
                return statistics.median(figure(run) for run in mine)

            rows.append([str(streams), f"--prefill-stall-ms {mine[0]['prefill_stall']['seconds'] * 1e3:g}",
                         median(lambda r: r["itl_ms_idle"]["p50"]), median(lambda r: r["itl_ms"]["max"]),
                         median(lambda r: r["worst_gap_ratio"]),
                         (sum(r["itl_ms"]["max"] <= r["goal_ms"] for r in mine), len(mine)),
                         median(lambda r: r["long_prompt_ttft_s"])])
    return rows


def policy_bench(perplexity: dict, *benches: dict) -> list[Row]:
    """precision-router/README.md: each policy's bits, perplexity of the calibration text and engine speed."""
    by_policy = {b["policy"]: b for b in benches}
    f32 = perplexity["policies"]["f32"]["perplexity"]
    rows = []
    for name, figures in perplexity["policies"].items():
        ppl = figures["perplexity"]
        bench = by_policy.get(name)
        rows.append([name, figures["bits_per_weight"], ppl if name == "f32" else (ppl, 100 * (ppl / f32 - 1)),
                     (bench["decode"]["1"]["tokens_per_s"], bench["decode"]["8"]["tokens_per_s"]) if bench else None,
                     bench["prefill_tokens_per_s"] if bench else None])
    return rows


def engine_bench(*benches: dict) -> list[Row]:
    """precision-router/README.md: `mimo-engine bench` per model: bits read, decode tok/s at batch 1 / 8, the
    fraction of the memory roofline, prefill tok/s, and batch 1's step profile (the fused blocks, the products
    outside them: the head's, the rest)."""
    rows = []
    for bench in benches:
        one = bench["decode"]["1"]
        profile = one["profile_ms"]
        products = sum(ms for part, ms in profile.items() if part.endswith("products"))
        rows.append([f"`{bench['model']}`", bench["bits_per_weight"],
                     (one["tokens_per_s"], bench["decode"]["8"]["tokens_per_s"]),
                     bench["decode_fraction_of_roofline"], bench["prefill_tokens_per_s"],
                     (one["step_ms"], profile["fused blocks"], products, profile["other"])])
    return rows


def accuracy(data: dict) -> list[Row]:
    """precision-router/README.md: per model, the default policy's and llama.cpp's prompt log-probabilities against
    float32 (largest and mean difference) and held-out perplexities, with the verdicts."""
    rows = []
    for model, figures in data["models"].items():
        diff, ppl = figures["logprob_abs_difference"], figures["perplexity_relative_difference"]
        verdicts = figures["verdicts"]
        rows.append([f"`{model}`", (diff["default"]["max"], diff["default"]["mean"]),
                     (diff["llama.cpp"]["max"], diff["llama.cpp"]["mean"]),
                     (100 * ppl["default"], 100 * ppl["llama.cpp"]),
                     "yes" if verdicts["default_no_further_than_llama_cpp"] else "no",
                     "yes" if verdicts["default_perplexity_within_tolerance"] else "no"])
    return rows


def kernels(data: dict) -> list[Row]:
    """precision-router/README.md: `benchmarks/kernels.py`, per integer format: GB/s of weights at batch 1, 4, 8."""
    return [[f"`{fmt}`", *(figures[str(n)]["gb_s"] for n in (1, 4, 8))] for fmt, figures in data["formats"].items()]


TABLES: dict[str, Callable[..., list[Row]]] = {
    "kernels": kernels,
    "engine-bench": engine_bench,
    "accuracy": accuracy,
    "interference": interference,
    "interference-stall": interference_stall,
    "policy-bench": policy_bench,
    "reference": reference,
    "speculation-summary": speculation_summary,
    "speculation": speculation_table,
    "ablation": ablation_table,
    "ablation-impact": ablation_impact,
    "sweep-summary": sweep_summary,
    "sweep": sweep_table,
    "versus-llamacpp": versus_llamacpp,
    "versus-vllm": versus_vllm,
    "benchmark-runs": benchmark_runs,
    "orchestrator-bench": orchestrator_bench,
    "spec-bench": spec_bench,
    "kv-bench": kv_bench,
    "kv-sizing": kv_sizing,
}


# ------------------------------------------------------------------------------------------------ the tests


ALL_TABLES = [t for readme in READMES for t in tables(readme)]
MEASURED = [t for t in ALL_TABLES if t.marker and not t.marker.startswith("none:")]


def _id(table: Table) -> str:
    return f"{table.readme.relative_to(ROOT)}:{table.line}"


def test_every_table_of_figures_says_where_they_come_from():
    unmarked = [_id(t) for t in ALL_TABLES if t.marker is None
                and any(HAS_FIGURE.search(cell) for row in t.rows for cell in row[1:])]
    assert not unmarked, f"tables of figures with no <!-- figures: ... --> marker: {unmarked}"


@pytest.mark.parametrize("table", MEASURED, ids=_id)
def test_table_figures_match_their_results_files(table: Table):
    name, *files = table.marker.split()
    assert name in TABLES, f"unknown figures table {name!r} (known: {', '.join(TABLES)})"
    assert files, f"the marker of {name!r} names no results file"
    text = table.readme.read_text(encoding="utf-8").splitlines()
    near = "\n".join(text[max(0, table.line - NEAR_LINES): table.line + len(table.rows) + 25])
    for file in files:
        assert (ROOT / file).is_file(), f"{file} is not in the repository"
        assert Path(file).name in MARKER.sub("", near), f"{file} is not named in the text near the table"
    expected = TABLES[name](*(_load(ROOT / file) for file in files))
    assert len(table.rows) == len(expected), f"{len(table.rows)} rows printed, {len(expected)} in the files"
    problems = []
    for printed_row, expected_row in zip(table.rows, expected):
        assert len(printed_row) == len(expected_row), f"row {printed_row[0]!r}: {len(printed_row)} cells"
        problems += [f"row {printed_row[0]!r}: {why}" for printed, wanted in zip(printed_row, expected_row)
                     if (why := check_cell(printed, wanted))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("printed, expected, ok", [
    ("1.54x / 1.20x / 1.63x", (1.542, 1.204, 1.631), True),
    ("1.54x / 1.20x / 1.63x", (1.542, 1.214, 1.631), False),
    ("+19.8%", 19.82, True),
    ("2,390", 2390, True),
    ("6.3e-5 .. 2.8e-4", (6.31e-5, 2.84e-4), True),
    ("6.3e-5", 6.4e-5, False),
    ("1 (65.70)", (1, 65.6976), True),
    ("`entropy@5.5`", "entropy@5.5", True),
    ("0.25", (0.25, 0.0), False),
])
def test_cells_compare_to_the_digits_printed(printed, expected, ok):
    assert (check_cell(printed, expected) is None) is ok
