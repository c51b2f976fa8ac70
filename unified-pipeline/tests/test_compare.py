"""compare_benchmarks.py pairs two runs of the same --n and --seed and says what differs when they are not; the
help of the scripts reads as plain text, defaults and flags as a person types them."""

import json
import os

from ds_benchmark.report import build_results
from ds_benchmark.suites import build_suite
from ds_benchmark.verify import score_record
from mimo_core.record import TraceEntry
from ds_benchmark.compare import compare


def scored_run(n: int, seed: int):
    """The results of a run of `n` math tasks at `seed`, every other answer right."""
    records = []
    for i, r in enumerate(build_suite(n, ["math"], seed)):
        r.consensus = {"answer": r.reference["answer"] if i % 2 else "-1", "confidence": 0.9}
        r.trace.append(TraceEntry("multi-agent-orchestrator", "ok", 1000.0 + i, 1002.0 + i, 2.0, 2, 100, 40))
        score_record(r)
        records.append(r)
    return build_results(records)


def test_runs_of_a_different_n_are_refused_saying_so():
    comparison = compare(scored_run(6, 0), scored_run(4, 0))
    assert not comparison.comparable and comparison.reasons[0] == "different suites: 6 tasks vs 4"
    same = compare(scored_run(4, 0), scored_run(4, 0))
    assert same.comparable and same.reasons == []


def test_the_refusal_names_each_difference_on_one_line(run_script, tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(scored_run(6, 0).to_dict()))
    (tmp_path / "b.json").write_text(json.dumps(scored_run(4, 1).to_dict()))
    done = run_script("compare_benchmarks", "a.json", "b.json", env=dict(os.environ), cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("compare_benchmarks.py: error: a.json and b.json are not comparable: different suites: 6 "
                           "tasks vs 4")
    assert "different seeds (0 vs 1)" in line and line.endswith("(--force compares them anyway)")


def test_help_shows_defaults_and_flags_as_typed(run_script, tmp_path):
    raw = run_script("run_benchmark", "--help", env=dict(os.environ), cwd=tmp_path, timeout=120).stdout
    bench = " ".join(raw.split())  # the help is wrapped to the terminal's width
    for shown in ("--n N ", "[default: 30]", "--domains DOMAIN... ", "[default: math coding triage]", "[default: 0]",
                  "--math-source SOURCE ", "[default: gsm8k]", "--out FILE ", "--html FILE ", "--config FILE "):
        assert shown in bench, shown
    flags = {line.split()[0]: line.split() for line in raw.splitlines() if line.strip().startswith("--")}
    assert flags["--ablation"][1] == "Also" and flags["--resume"][1] == "Continue"  # flags take no value
    raw_compare = run_script("compare_benchmarks", "--help", env=dict(os.environ), cwd=tmp_path, timeout=120).stdout
    compare = " ".join(raw_compare.split())
    assert "with the same --n and --seed" in compare and "saying what differs" in compare
    assert "A <path>" in compare and "--plot PNG " in compare and "--force Compare" in compare
    for text in (bench, compare):
        assert "<list[str]>" not in text and "<bool>" not in text and "<str>" not in text
