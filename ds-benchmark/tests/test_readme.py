"""The README's figures come from the commands it shows: its example outputs and its difficulty table stay true."""

import json
from pathlib import Path

from typer.testing import CliRunner

from ds_benchmark.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
runner = CliRunner()


def test_the_difficulty_table_is_what_the_command_prints():
    result = runner.invoke(app, ["difficulty"])
    assert result.exit_code == 0 and result.stdout.strip() in README


def test_the_examples_score_and_report_as_the_readme_says(tmp_path):
    scored = runner.invoke(app, ["score", str(ROOT / "examples" / "answered.jsonl")])
    assert scored.exit_code == 0
    said = [scored.stderr.strip()]
    (tmp_path / "scored.jsonl").write_text(scored.stdout)
    for args, out in ((), "results.json"), (("--wall-s", "50"), "slower.json"):
        reported = runner.invoke(app, ["report", str(tmp_path / "scored.jsonl"), *args, "--out", str(tmp_path / out)])
        assert reported.exit_code == 0
        said.append(reported.stderr.strip().replace(str(tmp_path / out), out))
    assert "\n".join(said) in README
    math_0001 = next(json.loads(line) for line in scored.stdout.splitlines() if '"math-0001"' in line)
    assert json.dumps(math_0001["verdict"]) in README.replace("\n ", " ")
    unchecked = runner.invoke(app, ["score", str(ROOT / "examples" / "unchecked.jsonl")])
    assert unchecked.exit_code == 0 and unchecked.stderr.strip() in README
