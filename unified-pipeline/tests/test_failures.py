"""A stage that fails is said and ends run_pipeline.py with exit 1, answer or not; no model is needed for any of it."""

import json
import os
import socket

from typer.testing import CliRunner

from mimo_core.record import TaskRecord, TraceEntry
from unified_pipeline import cli
from unified_pipeline.pipe import STAGES
from unified_pipeline.task import failure, stage_errors, task_record

ENDPOINT = {"backend": "remote", "endpoint": "http://127.0.0.1:9"}


def finished(answer: str | None, failed: dict[str, str]) -> TaskRecord:
    """A record as the pipe leaves it: every stage traced, those in `failed` with status error and their message
    in the record's error (as run_stage writes it)."""
    record = task_record("What is 12 * 8?", "math")
    for i, (stage, _) in enumerate(STAGES):
        status = "error" if stage in failed else "ok"
        record.trace.append(TraceEntry(stage, status, 100.0 + i, 100.5 + i, 0.5, 2, 120, 9, dict(ENDPOINT)))
    record.error = "; ".join(f"{stage}: {message}" for stage, message in failed.items()) or None
    if answer is not None:
        record.consensus = {"answer": answer, "confidence": 0.9}
    return record


def test_a_clean_record_is_no_failure():
    assert failure(finished("96", {})) is None


def test_a_failure_names_each_stage_with_its_error_and_trace_entry():
    record = finished(None, {"spec-reasoner": "APIConnectionError: Connection error.",
                             "multi-agent-orchestrator": "RuntimeError: every agent failed; the first: timeout"})
    said = failure(record)
    assert said.startswith("no answer: spec-reasoner failed: APIConnectionError: Connection error. (trace: error "
                           "after 0.50 s, 2 model calls, 120/9 tokens in/out, remote http://127.0.0.1:9); ")
    # a stage's message may itself hold "; ": it stays whole, under its stage
    assert "multi-agent-orchestrator failed: RuntimeError: every agent failed; the first: timeout (trace:" in said
    assert stage_errors(record.error)["multi-agent-orchestrator"] == "RuntimeError: every agent failed; the first: " \
                                                                      "timeout"


def test_an_answer_past_a_failed_stage_is_a_failure_and_an_error_no_stage_traced_is_said():
    said = failure(finished("96", {"spec-reasoner": "ValueError: bad draft"}))
    assert said.startswith("the answer came out past a failed stage: spec-reasoner failed: ValueError: bad draft")
    record = finished("96", {})
    record.error = "the input had no task"
    assert failure(record) == "the answer came out past a failed stage: the record's error: the input had no task"


def _run_cli(monkeypatch, tmp_path, record: TaskRecord, *args: str):
    """run_pipeline's command with the pipe replaced by the given outcome (the control flow after the pipe)."""
    monkeypatch.chdir(tmp_path)  # away from the repository's .env
    for name in [k for k in os.environ if k.startswith("MIMO_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "200")  # the table's rows unwrapped
    monkeypatch.setattr(cli, "run_task", lambda *_: record)
    monkeypatch.setattr(cli.daemon, "ensure_engine", lambda *_, **__: "")  # no engine: the pipe is replaced too
    return CliRunner().invoke(cli.pipeline_app, ["--task", "What is 12 * 8?", "--domain", "math", *args])


def test_an_answer_past_a_failed_stage_is_shown_and_the_exit_code_is_1(monkeypatch, tmp_path):
    record = finished("96", {"spec-reasoner": "ValueError: bad draft"})
    done = _run_cli(monkeypatch, tmp_path, record, "--json")
    assert done.exit_code == 1
    assert TaskRecord.from_dict(json.loads(done.stdout)).answer == "96"  # the answer is still shown
    assert done.stderr.startswith("run_pipeline.py: error: the answer came out past a failed stage: spec-reasoner "
                                  "failed: ValueError: bad draft (trace: error")
    assert len(done.stderr.strip().splitlines()) == 1
    clean = _run_cli(monkeypatch, tmp_path, finished("96", {}))
    assert clean.exit_code == 0 and clean.stderr == "" and "96" in clean.stdout


def test_a_stage_failing_for_real_ends_with_exit_1_and_says_which_and_why(run_script, tmp_path):
    with socket.socket() as sock:  # a port nothing listens on: every model call is refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"PATH": "", "MIMO_BASE_URL": f"http://127.0.0.1:{port}/v1", "MIMO_MODEL": "m", "MIMO_API_KEY": "k",
           "MIMO_MAX_RETRIES": "0", "MIMO_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "200"}
    done = run_script("run_pipeline", "--task", "What is 12 * 8?", "--domain", "math", "--json", env=env,
                      cwd=tmp_path, timeout=300)
    assert done.returncode == 1, done.stderr
    record = TaskRecord.from_dict(json.loads(done.stdout))  # the record is still printed, its error in it
    failed = [e.stage for e in record.trace if e.status == "error"]
    assert failed and record.answer is None
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"run_pipeline.py: error: no answer: {failed[0]} failed: APIConnectionError")
    for stage in failed:  # each failed stage, its error and its trace entry
        assert f"{stage} failed: {stage_errors(record.error)[stage]} (trace: error after" in line
    assert line.count(f"remote http://127.0.0.1:{port})") == len(failed)


def test_the_table_puts_a_failed_stages_error_in_its_row(monkeypatch, tmp_path):
    record = finished(None, {"spec-reasoner": "APIConnectionError: Connection error."})
    done = _run_cli(monkeypatch, tmp_path, record)
    assert done.exit_code == 1 and "(no answer)" in done.stdout
    assert "failed: APIConnectionError: Connection error." in done.stdout
