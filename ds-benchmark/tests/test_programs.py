"""`ds-benchmark sandbox`: the JSON-lines door another tool uses to run programs, through the real sandbox."""

import json

from typer.testing import CliRunner

from ds_benchmark.cli import app
from ds_benchmark.programs import SandboxResult

REQUESTS = [
    {"id": 1, "source": "print(6 * 7)"},
    {"id": "loop", "source": "while True:\n    pass\n", "limits": {"wall_s": 1}},
    {"id": 3, "source": "import sys\nprint('x' * 100000)\nsys.exit(4)"},
]


def invoke(lines: str):
    return CliRunner().invoke(app, ["sandbox"], input=lines)


def test_each_request_gets_its_result_in_order():
    result = invoke("".join(json.dumps(r) + "\n" for r in REQUESTS))
    assert result.exit_code == 0, result.stderr
    answers = [SandboxResult.from_json(line) for line in result.stdout.splitlines()]
    assert [a.id for a in answers] == [1, "loop", 3]  # an integer id stays an integer
    assert (answers[0].status, answers[0].output, answers[0].exit_code) == ("passed", "42\n", 0)
    assert (answers[1].status, answers[1].exit_code) == ("timed out", None)
    assert (answers[2].status, answers[2].exit_code) == ("failed", 4)
    assert len(answers[2].output) <= 2000  # only the tail is kept
    assert all(a.isolation and a.isolation.startswith("bwrap") for a in answers)


def test_a_bad_line_stops_with_its_number_after_the_results_before_it():
    result = invoke(json.dumps(REQUESTS[0]) + '\n{"id": 2, "source": "pass", "limits": {"wall_s": 100000}}\n')
    assert result.exit_code == 2
    assert len(result.stdout.splitlines()) == 1
    assert result.stderr.strip() == "ds-benchmark: error: line 2: limits: wall_s must be above 0 and at most 120"
    assert invoke('{"id": 1}\n').stderr.strip() == "ds-benchmark: error: line 1: missing source"


def test_where_no_sandbox_can_run_every_result_is_an_error_and_it_says_so_once(without_sandbox):
    """A real machine without a working bubblewrap: a user namespace in which no further one may be made."""
    run = without_sandbox(["sandbox"], "".join(json.dumps(r) + "\n" for r in REQUESTS))
    assert run.returncode == 3, run.stderr
    answers = [SandboxResult.from_json(line) for line in run.stdout.splitlines()]
    assert [(a.id, a.status, a.isolation) for a in answers] == [(1, "error", None), ("loop", "error", None),
                                                                 (3, "error", None)]
    assert answers[0].detail.startswith("bubblewrap cannot run here: bwrap: ")
    assert len(run.stderr.splitlines()) == 1
