"""run_pipeline.py end to end on the real engine: one task through the five stage processes."""

import json
import os
import threading
import time
from pathlib import Path

import pytest

from mimo_core.record import COMPONENTS, TaskRecord
from unified_pipeline.pipe import STAGES, run_pipe
from unified_pipeline.task import task_record

pytestmark = pytest.mark.model


def test_one_task_through_the_pipe_gives_a_scored_record(engine_settings, run_script, script_env, tmp_path):
    done = run_script("run_pipeline", "--task", "What is 12 * 8?", "--domain", "math", "--reference", "96",
                      "--disable", "spec-reasoner", "--json", env=script_env(engine_settings), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    record = TaskRecord.from_dict(json.loads(done.stdout))
    assert [e.stage for e in record.trace] == [name for name, _ in STAGES]
    status = {e.stage: e.status for e in record.trace}
    assert status["spec-reasoner"] == "baseline" and status["multi-agent-orchestrator"] == "ok"
    assert record.error is None and record.answer
    assert "chain" not in record.reasoning and record.reasoning["speculation"]["method"] == "none"
    assert record.verdict["correct"] in (True, False) and record.verdict["expected"] == "96"
    assert 0.0 <= record.consensus["confidence"] <= 1.0 and record.precision["policy"]


def test_a_task_without_reference_is_shown_and_not_scored(engine_settings, run_script, script_env, tmp_path):
    done = run_script("run_pipeline", "--task", "What is 12 * 8? [bold]x[/bold]", "--domain", "math",
                      *[arg for c in COMPONENTS for arg in ("--disable", c)],
                      env=script_env(engine_settings, COLUMNS="200"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "not scored: the record has no reference" in done.stdout
    assert "[bold]x[/bold]" in done.stdout  # the task is shown as text, never read as markup
    for stage, _ in STAGES:
        assert stage in done.stdout
    assert done.stdout.count("baseline") == len(COMPONENTS)


@pytest.mark.parametrize("args, said", [
    (["--task", " ", "--domain", "math"], "--task is empty"),
    (["--task", "x", "--domain", "chemistry"], "--domain 'chemistry'"),
    (["--task", "x", "--domain", "math", "--disable", "gpu"], "names no component 'gpu'"),
    (["--task", "x", "--domain", "coding", "--reference", "42"], "checked by tests"),
    (["--task", "x", "--domain", "triage", "--reference", "ESI 9"], "an ESI level, 1 to 5"),
])
def test_bad_input_is_one_line_and_exit_2(args, said, run_script, tmp_path):
    done = run_script("run_pipeline", *args, env={"PATH": ""}, cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and said in done.stderr and len(done.stderr.strip().splitlines()) == 1


def children() -> dict[int, str]:
    """This process's children and their states (R, S, Z...), from /proc."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, IndexError, ValueError):
            continue  # gone while being read
        if int(parent) == os.getpid():
            found[int(stat.parent.name)] = state
    return found


def test_each_stage_process_is_reaped_as_it_ends(engine_settings, script_env, tmp_path):
    records = [task_record(f"What is {i} + {i}?", "math", str(2 * i), list(COMPONENTS)) for i in range(1, 4)]
    all_out = threading.Event()
    earlier = set(children())  # an engine an earlier test of this process started is a child too

    def stage_children() -> dict[int, str]:
        return {pid: state for pid, state in children().items() if pid not in earlier}

    def feed():
        yield from records
        # The stages' input ends only once every record is out, so that they end while the pipe's generator waits;
        # unless a stage has ended already (it failed: the pipe ends and says why).
        while not all_out.wait(0.5):
            if len(stage_children()) < len(STAGES) or "Z" in stage_children().values():
                return

    with open(tmp_path / "stages.log", "w+", encoding="utf-8") as log:
        pipe = run_pipe(feed(), script_env(engine_settings), log)
        out = [next(pipe) for _ in records]
        stages = stage_children()
        assert len(stages) == len(STAGES) and "Z" not in stages.values()
        all_out.set()
        # the pipe's generator is paused here, its consumer not yet back: a stage process is reaped as it ends,
        # not when the run ends (before, each waited as a zombie for the last one and the caller)
        deadline = time.monotonic() + 300
        while set(stage_children()) & set(stages):
            assert time.monotonic() < deadline, f"stage processes left unreaped: {stage_children()}"
            time.sleep(0.2)
        assert list(pipe) == []
    assert [r.id for r in out] == [r.id for r in records] and all(r.verdict for r in out)
    assert "Z" not in stage_children().values()
