"""Suites: reproducible from the seed, split evenly, references kept out of the tasks."""

import json
from collections import Counter

import pytest

from ds_benchmark.esi import Patient, esi_level
from ds_benchmark.suites import build_suite, math, split
from ds_benchmark.verify import check_math


def as_json(records):
    return [json.dumps(r.to_dict(), sort_keys=True) for r in records]


def test_reproducible_from_the_seed():
    domains = ["math", "coding", "triage"]
    assert as_json(build_suite(30, domains, 7)) == as_json(build_suite(30, domains, 7))
    assert as_json(build_suite(30, domains, 7)) != as_json(build_suite(30, domains, 8))


def test_a_domain_does_not_depend_on_the_others():
    alone = [(r.id, r.task, r.reference) for r in build_suite(5, ["triage"], 7)]
    mixed = [(r.id, r.task, r.reference) for r in build_suite(15, ["math", "coding", "triage"], 7)
             if r.domain == "triage"]
    assert alone == mixed


@pytest.mark.parametrize("n, expected", [(30, [10, 10, 10]), (10, [4, 3, 3]), (2, [1, 1, 0])])
def test_split_evenly(n, expected):
    records = build_suite(n, ["math", "coding", "triage"], 1) if n > 2 else None
    assert list(split(n, ["math", "coding", "triage"]).values()) == expected
    if records:
        counts = Counter(r.domain for r in records)
        assert [counts[d] for d in ("math", "coding", "triage")] == expected
        assert len({r.id for r in records}) == n


def test_records_carry_reference_and_difficulty_but_never_leak_it():
    for r in build_suite(60, ["math", "coding", "triage"], 3):
        assert r.reference and r.config == {"disabled": [], "seed": 3,
                                            "suite": "math+coding+triage (math from gsm8k)"}
        if r.domain == "math":
            assert 1 <= r.difficulty <= 8 and r.reference["answer"].lstrip("-").isdigit()
        elif r.domain == "coding":
            assert r.difficulty in (1.0, 2.0, 3.0)
            assert r.reference["tests"] not in r.task and "canonical_solution" in r.reference
        else:
            assert r.difficulty in (1.0, 2.0, 3.0) and "ESI" in r.task
            facts = r.reference["facts"]
            assert esi_level(Patient(**facts)) == (r.reference["level"], r.reference["decision_point"])
            assert str(r.reference["level"]) not in r.task.split("ESI")[-1].replace("(1-5)", "")


def test_math_story_is_hand_checkable():
    first = build_suite(1, ["math"], 7, math_source="templates")[0]
    # Grace has 24 pencils; Diego has five times as many (120); then he buys 52 more.
    assert first.task.startswith("Grace has 24 pencils. Diego has five times as many pencils as Grace.")
    assert first.reference == {"answer": "172"} and first.difficulty == 2.0


def test_gsm8k_is_the_default_math_source_and_templates_stay_selectable():
    gsm8k = build_suite(6, ["math"], 4)
    questions = {question for question, _, _ in math.read_gsm8k()}
    assert all(r.task in questions for r in gsm8k) and len({r.task for r in gsm8k}) == 6
    assert {r.config["suite"] for r in gsm8k} == {"math (math from gsm8k)"}
    templates = build_suite(6, ["math"], 4, math_source="templates")
    assert not any(r.task in questions for r in templates) and all(1 <= r.difficulty <= 5 for r in templates)
    with pytest.raises(ValueError, match="math source"):
        build_suite(1, ["math"], 4, math_source="textbook")


def test_gsm8k_test_set_ships_whole_with_its_licence():
    rows = math.read_gsm8k()
    assert len(rows) == 1319
    licence = (math.GSM8K.parent / "gsm8k_LICENSE.txt").read_text()
    assert "MIT License" in licence and "Copyright (c) 2021 OpenAI" in licence
    assert "openai/grade-school-math" in (math.GSM8K.parent / "gsm8k_SOURCE.txt").read_text()


def test_the_math_verifier_agrees_with_every_gsm8k_reference_solution():
    # The whole reference solution (steps, <<calculator>> notes, "#### N") against the number after "####" as
    # GSM8K writes it ("1,600", "-3"): the verifier must find that number and judge it equal, all 1,319 times.
    disagree = [(question, final) for question, solution, final in math.read_gsm8k()
                if not check_math(solution, {"answer": final})[0]]
    assert disagree == []


def test_gsm8k_difficulty_counts_the_solution_steps():
    assert math.solution_steps("a <<1+1=2>>2\nb <<2*3=6>>6\nc\n#### 6") == 3
    assert math.solution_steps("one line <<2*3=6>> and <<6+1=7>>\n#### 7") == 2
    assert math.solution_steps("#### 7") == 1
    counts = Counter(min(math.solution_steps(s), math.MAX_STEPS) for _, s, _ in math.read_gsm8k())
    assert set(counts) == set(range(2, 9)) and counts[3] == 371


def test_gsm8k_file(tmp_path):
    rows = [{"question": f"Q{i}?", "answer": f"A <<2*3=6>> then <<6+1=7>>\n#### {i},000"} for i in range(1, 4)]
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    records = build_suite(2, ["math"], 5, gsm8k=path)
    assert {r.task for r in records} <= {"Q1?", "Q2?", "Q3?"}
    for r in records:
        assert r.reference["answer"] == r.task[1] + "000" and r.difficulty == 2.0
    path.write_text('{"question": "Q?", "answer": "no final line"}\n')
    with pytest.raises(ValueError, match="line 1"):
        build_suite(1, ["math"], 5, gsm8k=path)


def test_bad_requests():
    with pytest.raises(ValueError, match="domains"):
        build_suite(3, ["math", "poetry"], 1)
    with pytest.raises(ValueError, match="164 problems"):
        build_suite(200, ["coding"], 1)
