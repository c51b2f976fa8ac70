"""The command line: help, version, one-line errors with exit code 2, and the stage's bad-input contract."""

import subprocess
import sys

from typer.testing import CliRunner

from multi_agent_orchestrator.cli import app

runner = CliRunner()


def test_help_and_version():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "run" in result.output and "bench" in result.output
    assert "agents" in runner.invoke(app, ["run", "--help"]).output
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.startswith("multi-agent-orchestrator ")


def test_bad_options_fail_in_one_line_with_exit_2():
    for args, words in ((["run", "--agents", "0"], "agents must be at least 1"),
                        (["run", "--weighting", "loudest"], "weighting must be one of"),
                        (["run", "/no/such/file.jsonl"], "No such file"),
                        (["bench", "--agents", "1,x"], "expected numbers")):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, args
        assert words in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_bad_records_stop_the_stage_with_exit_2_and_say_where():
    # The first line is not a record: nothing reaches a model, the reader says which line.
    done = subprocess.run([sys.executable, "-m", "multi_agent_orchestrator", "run"], input='{"id": 1}\n',
                          capture_output=True, text=True, env={"MIMO_BASE_URL": "http://127.0.0.1:9", "PATH": ""})
    assert done.returncode == 2 and done.stderr.strip().startswith("multi-agent-orchestrator: error: line 1:") and done.stdout == ""
