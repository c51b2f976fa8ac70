"""The files of a run: which results_vN a run takes, and what a resumed run keeps of a records file."""

import json
import re
from pathlib import Path

import pytest

from ds_benchmark.suites import build_suite
from unified_pipeline.benchmark import RunFiles, default_results_path

NUMBERS = {3: "three", 4: "four", 5: "five"}


def scored(i: int, disabled=(), error=None):
    record = build_suite(4, ["math"], 0)[i]
    record.config["disabled"] = list(disabled)
    record.verdict = {"correct": True, "confidence": 0.9, "difficulty": 1.0, "score": 1.0,
                      "overconfident_wrong": False, "detail": "equal"}
    record.error = error
    return json.dumps(record.to_dict())


def test_new_runs_take_the_next_results_file_and_resume_takes_the_newest(tmp_path):
    assert default_results_path(tmp_path, resume=False).name == "results_v1.json"
    with pytest.raises(ValueError, match="no run to continue"):
        default_results_path(tmp_path, resume=True)
    RunFiles(tmp_path / "results_v1.json").plan.write_text("{}")
    (tmp_path / "results_v2.json").write_text("{}")  # a finished run whose plan was removed
    assert default_results_path(tmp_path, resume=False).name == "results_v3.json"
    assert default_results_path(tmp_path, resume=True).name == "results_v1.json"


def test_a_torn_line_a_failed_record_and_a_repeat_are_dropped_and_the_file_compacted(tmp_path):
    files = RunFiles(tmp_path / "r.json")
    lines = [scored(0), scored(1, error="spec-reasoner: APIConnectionError: engine gone"), scored(0),
             scored(0, disabled=["spec-reasoner"]), scored(2)[:40]]
    files.records.write_text("\n".join(lines))  # the last line was being written when the run was killed
    kept = files.done.load()
    assert [(r.id, r.disabled) for r in kept] == [("math-0000", []), ("math-0000", ["spec-reasoner"])]
    assert files.records.read_text().splitlines() == [lines[0], lines[3]]  # the pipe appends after whole lines
    assert files.done.load() == kept


def test_a_torn_line_before_the_end_is_an_error_not_silently_dropped(tmp_path):
    files = RunFiles(tmp_path / "r.json")
    files.records.write_text("\n".join([scored(0)[:30], scored(1)]) + "\n")
    with pytest.raises(ValueError, match="line 1"):
        files.done.load()


def test_the_readme_lists_every_file_of_a_run_and_counts_them_right():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    listed = re.findall(r"^\| `(NAME\.[a-z.]+)` \|", text, re.M)
    files = RunFiles(Path("NAME.json"))
    assert sorted(listed) == sorted(path.name for path in (files.plan, files.records, files.results, files.log))
    assert f"A run is {NUMBERS[len(listed)]} files" in text
