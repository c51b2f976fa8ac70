"""The CLI: --help, --version, one-line errors with exit code 2 on bad input or options."""

import json

from typer.testing import CliRunner

from spec_reasoner.cli import app

runner = CliRunner()


def test_help_and_version():
    assert "speculative" in runner.invoke(app, ["--help"]).output.lower()
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("spec-reasoner ")


def test_bad_options_are_one_line_errors():
    for args, says in [(["reason", "--k", "0"], "k must be"), (["reason", "--threshold", "12"], "threshold must be"),
                       (["bench", "--pairing", "nocolon"], "DRAFT:ORACLE"), (["bench", "--thresholds", "5,x"], "--thresholds"),
                       (["reason", "/no/such/file.jsonl"], "No such file")]:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_bad_record_stops_with_line_number_and_no_model_call(tmp_path):
    path = tmp_path / "in.jsonl"
    disabled = {"id": "a", "domain": "math", "task": "1+1", "config": {"disabled": ["spec-reasoner"]}}
    path.write_text(json.dumps(disabled) + "\n{not json\n")
    env = {"MIMO_CACHE_DIR": str(tmp_path), "MIMO_BASE_URL": "http://127.0.0.1:9/v1", "MIMO_MODEL": "m"}
    result = runner.invoke(app, ["reason", str(path)], env=env)
    assert result.exit_code == 2 and "spec-reasoner: error: line 2: not valid JSON" in result.stderr
    written = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in written] == ["a"] and written[0]["trace"][-1]["status"] == "baseline"
