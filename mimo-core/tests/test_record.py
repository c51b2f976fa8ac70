import io
import json

import pytest

from mimo_core.contract import ContractError
from mimo_core.record import RecordError, TaskRecord, TraceEntry, read_records, write_record
from mimo_core.served import FIGURES, Served

BASE = {"schema": "mimo.task/1", "id": "math-0003", "domain": "math", "task": "What is 12 * 8?"}


def test_round_trip_keeps_every_field_including_unknown_ones():
    data = dict(
        BASE,
        difficulty=2.0,
        reference={"answer": "96"},
        config={"disabled": ["spec-reasoner"], "seed": 7},
        reasoning={"answer": "96", "custom": [1, 2]},
        trace=[{"stage": "a", "status": "ok", "started_at": 1.0, "ended_at": 2.5, "wall_s": 1.5, "calls": 1,
                "prompt_tokens": 10, "completion_tokens": 3, "provenance": {"backend": "embedded", "models": ["m"]},
                "served": Served(calls=1, prompt_tokens=10, completion_tokens=3, cached_tokens=8,
                                 reported={**dict.fromkeys(FIGURES, False), "cached_tokens": True}).to_dict()}],
        error=None,
        my_tool={"anything": ["goes", {"nested": True}]},
    )
    record = TaskRecord.from_dict(data)
    assert record.disabled == ["spec-reasoner"]
    out = record.to_dict()
    assert out["my_tool"] == data["my_tool"]
    for key in ("reference", "config", "reasoning", "trace", "difficulty", "id", "task"):
        assert out[key] == data[key]


def test_defaults_fill_missing_sections():
    record = TaskRecord.from_dict(dict(BASE))
    assert record.precision == {} and record.trace == [] and record.error is None and record.answer is None


@pytest.mark.parametrize(
    "line, reason",
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "must be an object"),
        (json.dumps(dict(BASE, schema="mimo.task/9")), "unknown schema"),
        (json.dumps({k: v for k, v in BASE.items() if k != "id"}), "missing id"),
        (json.dumps({k: v for k, v in BASE.items() if k != "task"}), "missing task"),
        (json.dumps({k: v for k, v in BASE.items() if k != "domain"}), "missing domain"),
        (json.dumps(dict(BASE, domain="poetry")), "'poetry' is not one of"),
        (json.dumps(dict(BASE, difficulty="hard")), "difficulty"),
        (json.dumps(dict(BASE, trace=[{"stage": "x"}])), "trace[0]: missing"),
        (json.dumps(dict(BASE, config={"disabled": "kv"})), "config.disabled"),
    ],
)
def test_bad_lines_name_their_line_number(line, reason):
    stream = io.StringIO(json.dumps(BASE) + "\n\n" + line + "\n")
    records = read_records(stream)
    assert next(records).id == "math-0003"
    with pytest.raises(RecordError) as info:
        next(records)
    assert str(info.value).startswith("line 3: ") and reason in str(info.value)


def test_blank_lines_are_skipped_and_a_10mb_line_streams():
    big_task = "x" * (10 * 1024 * 1024)
    stream = io.StringIO("\n   \n" + json.dumps(dict(BASE, task=big_task)) + "\n\n")
    (record,) = list(read_records(stream))
    assert len(record.task) == len(big_task)


def test_write_record_is_one_flushed_line():
    out = io.StringIO()
    record = TaskRecord.from_dict(BASE)
    record.trace.append(TraceEntry("s", "ok", 1.0, 2.0, 1.0))
    write_record(record, out)
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    assert json.loads(text)["trace"][0]["stage"] == "s"


def test_trace_status_is_checked():
    with pytest.raises(ContractError, match="'weird' is not one of"):
        TraceEntry.from_dict({"stage": "s", "status": "weird", "started_at": 0, "ended_at": 1})


def test_an_integer_id_passes_through_unchanged():
    out = TaskRecord.from_dict(dict(BASE, id=17)).to_dict()
    assert out["id"] == 17 and json.loads(json.dumps(out))["id"] == 17


@pytest.mark.parametrize("disabled", [["spec-reasoner", "spec-reasoners"], ["kv"], [3]])
def test_a_typo_in_config_disabled_is_an_error_not_a_full_run(disabled):
    with pytest.raises(RecordError, match="config.disabled"):
        TaskRecord.from_dict(dict(BASE, config={"disabled": disabled}))


def test_null_sections_read_as_empty_and_unknown_sections_stay():
    record = TaskRecord.from_dict(dict(BASE, kv=None, trace=None, tool_x={"a": 1}))
    assert record.kv == {} and record.trace == [] and record.to_dict()["tool_x"] == {"a": 1}
