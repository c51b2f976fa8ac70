"""Suites: reproducible from the seed, split evenly, references kept out of the tasks."""

import json
from collections import Counter

import pytest

from ds_benchmark.difficulty import FIELD, LEVELS, Measure, distribution, level
from ds_benchmark.esi import Patient, danger_zone, esi_level
from ds_benchmark.suites import build_suite, coding, difficulty_report, math, split, triage
from ds_benchmark.verify import check_math
from mimo_core.record import TaskRecord

MEASURES = {"math": "solution_steps", "coding": "code_steps", "triage": "esi_decision_point"}


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


@pytest.mark.parametrize("n, expected", [(30, [10, 10, 10]), (10, [4, 3, 3]), (31, [11, 10, 10]), (3, [1, 1, 1])])
def test_split_evenly_the_first_domains_taking_the_remainder(n, expected):
    assert list(split(n, ["math", "coding", "triage"]).values()) == expected
    records = build_suite(n, ["math", "coding", "triage"], 1)
    counts = Counter(r.domain for r in records)
    assert [counts[d] for d in ("math", "coding", "triage")] == expected
    assert len({r.id for r in records}) == n


@pytest.mark.parametrize("n, domains", [(2, ["math", "coding", "triage"]), (1, ["math", "triage"])])
def test_fewer_tasks_than_domains_is_refused_not_a_domain_dropped(n, domains):
    expected = f"--n {n} is fewer than the {len(domains)} domains ({', '.join(domains)})"
    with pytest.raises(ValueError) as split_refused:
        split(n, domains)
    with pytest.raises(ValueError) as build_refused:
        build_suite(n, domains, 1)
    assert str(split_refused.value) == str(build_refused.value) == expected


def test_records_carry_reference_and_difficulty_but_never_leak_it():
    for r in build_suite(60, ["math", "coding", "triage"], 3):
        assert r.reference and r.config == {"disabled": [], "seed": 3,
                                            "suite": "math+coding+triage (math from gsm8k)"}
        assert r.difficulty in LEVELS and r.extra[FIELD]["name"] == MEASURES[r.domain]
        if r.domain == "math":
            assert r.reference["answer"].lstrip("-").isdigit()
        elif r.domain == "coding":
            assert r.reference["tests"] not in r.task and "canonical_solution" in r.reference
        else:
            assert "ESI" in r.task
            facts = r.reference["facts"]
            assert esi_level(Patient(**facts)) == (r.reference["level"], r.reference["decision_point"])
            assert str(r.reference["level"]) not in r.task.split("ESI")[-1].replace("(1-5)", "")


def test_math_story_is_hand_checkable():
    first = build_suite(1, ["math"], 7, math_source="templates")[0]
    # Grace has 24 pencils; Diego has five times as many (120); then he buys 52 more.
    assert first.task.startswith("Grace has 24 pencils. Diego has five times as many pencils as Grace.")
    assert first.reference == {"answer": "172"} and first.extra[FIELD] == {"name": "operations", "value": 2}
    assert first.difficulty == 1.0  # two steps: level 1


def test_gsm8k_is_the_default_math_source_and_templates_stay_selectable():
    gsm8k = build_suite(6, ["math"], 4)
    questions = {question for question, _, _ in math.read_gsm8k()}
    assert all(r.task in questions for r in gsm8k) and len({r.task for r in gsm8k}) == 6
    assert {r.config["suite"] for r in gsm8k} == {"math (math from gsm8k)"}
    templates = build_suite(6, ["math"], 4, math_source="templates")
    assert not any(r.task in questions for r in templates)
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
    counts = Counter(math.solution_steps(s) for _, s, _ in math.read_gsm8k())
    assert set(counts) == {2, 3, 4, 5, 6, 7, 8, 9, 11} and counts[3] == 371


def test_coding_difficulty_counts_statements_and_the_loops_and_conditions_in_expressions():
    assert coding.solution_steps("    return number % 1.0\n") == 1
    # a loop and its condition count the same written as statements or as a comprehension
    assert coding.solution_steps("    return [x for x in xs if x > 0]\n") == 3
    assert coding.solution_steps("    out = []\n    for x in xs:\n        if x > 0:\n            out.append(x)\n"
                                 "    return out\n") == 5
    assert coding.solution_steps("    return 'a' if x else 'b'\n") == 2


def test_the_scale_is_monotone_and_spans_1_to_5():
    for rule in (math.difficulty, coding.difficulty):
        levels = [rule(steps) for steps in range(1, 60)]
        assert levels == sorted(levels) and levels[0] == 1.0 and levels[-1] == 5.0 and set(levels) == set(LEVELS)
    # triage: the further down the ESI algorithm the level is settled, the harder
    assert list(triage.DIFFICULTY) == ["A", "B", "C", "D", "D (danger zone)"]
    assert list(triage.DIFFICULTY.values()) == [1.0, 2.0, 3.0, 4.0, 5.0]
    with pytest.raises(ValueError, match="increase"):
        level(3, (2, 2, 4, 5))


SHIPPED = {  # every shipped suite (whole where it is a data set, at the default seed where it is generated), measure
    "gsm8k": (lambda: build_suite(1319, ["math"], 0), "solution_steps", math.difficulty),
    "templates": (lambda: build_suite(500, ["math"], 0, math_source="templates"), "operations", math.difficulty),
    "humaneval": (lambda: build_suite(164, ["coding"], 0), "code_steps", coding.difficulty),
    "triage": (lambda: build_suite(500, ["triage"], 0), "esi_decision_point", triage.DIFFICULTY.__getitem__),
}


@pytest.mark.parametrize("suite", SHIPPED)
def test_every_shipped_suite_lies_on_the_scale_with_its_raw_measure(suite):
    build, name, rule = SHIPPED[suite]
    records = build()
    for r in records:
        measure = r.to_dict()[FIELD]  # a top-level field of the record, beside `difficulty`
        assert r.difficulty in LEVELS and measure["name"] == name
        assert r.difficulty == rule(measure["value"])
        assert TaskRecord.from_dict(json.loads(json.dumps(r.to_dict()))).to_dict()[FIELD] == measure  # kept
        if r.domain == "triage":  # level 5 is exactly the danger-zone upgrade at D
            upgraded = r.reference["decision_point"] == "D" and danger_zone(Patient(**r.reference["facts"]))
            assert (r.difficulty == 5.0) == upgraded
    spread = Counter(r.difficulty for r in records)
    assert len(spread) >= 4 and max(spread.values()) < 0.45 * len(records)  # no level holds most of a suite


def test_the_difficulty_table_counts_the_shipped_suites():
    rows = {r.suite: r for r in difficulty_report(n=200, seed=0)}
    assert list(rows) == ["math: GSM8K test set", "math: templates (seed 0)", "coding: HumanEval",
                          "triage: ESI v4 vignettes (seed 0)"]
    assert rows["math: GSM8K test set"].counts == {"1": 326, "2": 371, "3": 297, "4": 175, "5": 150}
    assert rows["coding: HumanEval"].counts == {"1": 29, "2": 31, "3": 50, "4": 32, "5": 22}
    triage_rows = Counter(r.difficulty for r in build_suite(200, ["triage"], 0))
    assert rows["triage: ESI v4 vignettes (seed 0)"].counts == {str(k): triage_rows[float(k)] for k in LEVELS}
    assert all(sum(r.counts.values()) == r.tasks for r in rows.values())
    with pytest.raises(ValueError, match="off the 1..5 scale: 6"):
        distribution("bad", [(6.0, Measure("x", 1))])
    with pytest.raises(ValueError, match="one measure expected, found x, y"):
        distribution("mixed", [(1.0, Measure("x", 1)), (2.0, Measure("y", 3))])


def test_gsm8k_file(tmp_path):
    rows = [{"question": f"Q{i}?", "answer": f"A <<2*3=6>> then <<6+1=7>>\n#### {i},000"} for i in range(1, 4)]
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    records = build_suite(2, ["math"], 5, gsm8k=path)
    assert {r.task for r in records} <= {"Q1?", "Q2?", "Q3?"}
    for r in records:
        assert r.reference["answer"] == r.task[1] + "000" and r.difficulty == 1.0
        assert r.extra[FIELD] == {"name": "solution_steps", "value": 2}
    path.write_text('{"question": "Q?", "answer": "no final line"}\n')
    with pytest.raises(ValueError, match="line 1"):
        build_suite(1, ["math"], 5, gsm8k=path)


def test_bad_requests():
    with pytest.raises(ValueError, match="domains"):
        build_suite(3, ["math", "poetry"], 1)
    with pytest.raises(ValueError, match="164 problems"):
        build_suite(200, ["coding"], 1)
