"""What every tool's command and bench share: the runs file, a sibling tool's command, the figures, the flags."""

import json
from dataclasses import dataclass

import numpy as np
import pytest

from mimo_core.command import deprecated_model, domain_words
from mimo_core.console import print_json
from mimo_core.contract import Contract
from mimo_core.runs import RunsFile
from mimo_core.stats import bootstrap_interval, decisions_per_second
from mimo_core.tools import ToolError, run_tool, tool_command


@dataclass
class Run(Contract):
    key: str
    value: int
    ok: bool = True


def runs(path, **kwargs) -> RunsFile[Run]:
    return RunsFile(path, lambda line, n: Run.from_json(line, f"{path}:{n}"), key=lambda r: r.key, **kwargs)


def test_runs_are_appended_read_back_and_a_new_run_starts_empty(tmp_path):
    kept = runs(tmp_path / "deep" / "runs.jsonl")
    assert kept.load() == [] and kept.start(resume=False) == []
    kept.append(Run("a", 1))
    kept.append(Run("b", 2))
    assert kept.start(resume=True) == [Run("a", 1), Run("b", 2)]
    assert kept.start(resume=False) == [] and kept.path.read_text() == ""


def test_a_torn_last_line_a_refused_run_and_a_repeat_are_dropped_and_the_file_compacted(tmp_path):
    path = tmp_path / "runs.jsonl"
    lines = [json.dumps(Run(*row).to_dict()) for row in (("a", 1), ("b", 2, False), ("a", 3), ("c", 4))]
    path.write_text("\n".join(lines[:3] + [lines[3][:12]]))  # killed while writing the last line
    kept = runs(path, keep=lambda r: r.ok)
    assert kept.load() == [Run("a", 1)]
    assert path.read_text() == lines[0] + "\n"  # appends follow whole lines only
    kept.append(Run("c", 4))
    assert kept.load() == [Run("a", 1), Run("c", 4)]


def test_a_bad_line_before_the_last_or_a_whole_bad_last_line_is_an_error(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text('{"key": "a"\n' + json.dumps(Run("b", 2).to_dict()) + "\n")
    with pytest.raises(ValueError, match="runs.jsonl:1"):
        runs(path).load()
    path.write_text('{"key": "a"}\n')
    with pytest.raises(ValueError, match="runs.jsonl:1: missing value"):
        runs(path).load()


def test_a_sibling_tool_is_found_beside_the_interpreter_and_its_failure_is_one_line():
    assert tool_command("ds-benchmark").endswith("ds-benchmark")
    with pytest.raises(ToolError, match=r"^no-such-tool is not installed"):
        tool_command("no-such-tool")
    with pytest.raises(ToolError, match=r"^ds-benchmark report failed \(exit 2\): .*error"):
        run_tool("ds-benchmark", "report", "/no/such/file.jsonl")


def test_ds_and_the_bootstrap_interval():
    assert decisions_per_second([1.0, 2.0, 3.0], [1.0, -1.0, 0.0], 2.0) == pytest.approx(-0.5)
    table = np.array([[1.0, 1.0], [2.0, 0.0], [1.0, 1.0]])
    ci = bootstrap_interval(table, lambda t: decisions_per_second(t[..., 0], t[..., 1], 1.0), seed=3)
    assert ci == bootstrap_interval(table, lambda t: decisions_per_second(t[..., 0], t[..., 1], 1.0), seed=3)
    assert ci[0] <= 2.0 <= ci[1]
    assert bootstrap_interval(np.zeros((0, 2)), lambda t: t.sum(-1)) is None
    assert bootstrap_interval(np.zeros((3, 1)), lambda t: -t[..., 0].sum(-1)) == [0.0, 0.0]  # never -0.0
    assert bootstrap_interval(np.array([[1 / 3]]), lambda t: t[..., 0].mean(-1), digits=2) == [0.33, 0.33]


def test_domains_are_words_and_old_spellings_work_with_a_warning(capsys):
    assert domain_words(["math"], ["coding", "triage"], "tool") == ["math", "coding", "triage"]
    assert capsys.readouterr().err == ""
    assert domain_words(["math,coding"], [], "tool") == ["math", "coding"]
    assert capsys.readouterr().err == ("tool: warning: --domains takes words separated by spaces (--domains math "
                                       "coding); commas are deprecated\n")
    assert deprecated_model("a", None, "--oracle-model", "tool") == "a" and capsys.readouterr().err == ""
    assert deprecated_model(None, "b", "--oracle-model", "tool") == "b"
    assert capsys.readouterr().err == "tool: warning: --oracle-model is deprecated; use --model\n"


def test_json_goes_to_stdout_indented(capsys):
    print_json({"a": [1]})
    assert capsys.readouterr().out == '{\n  "a": [\n    1\n  ]\n}\n'
