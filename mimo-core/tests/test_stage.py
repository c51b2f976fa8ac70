import asyncio
import functools
import io
import json
import threading
import time

from mimo_core.client import Completion, Usage
from mimo_core.settings import Settings
from mimo_core.stage import REORDER_FACTOR, StageContext, run_stage
from mimo_core.testing import pipe

SETTINGS = Settings(concurrency=3)


def _lines(n, **extra):
    return "".join(
        json.dumps({"id": f"r{i}", "domain": "math", "task": f"{i} + 1", **extra}) + "\n" for i in range(n)
    )


def _run(process, text, **kwargs):
    return pipe(functools.partial(run_stage, "demo", process), text.splitlines(keepends=True), settings=SETTINGS,
                **kwargs)


def test_records_keep_input_order_and_concurrency_is_bounded():
    running, peak = [0], [0]

    async def process(record, ctx):
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        await asyncio.sleep(0.02 * (5 - int(record.id[1:]) % 5))  # later records finish first
        running[0] -= 1
        record.reasoning["answer"] = str(int(record.task.split()[0]) + 1)

    code, out = _run(process, _lines(10))
    assert code == 0
    assert [r["id"] for r in out] == [f"r{i}" for i in range(10)]
    assert [r["reasoning"]["answer"] for r in out] == [str(i + 1) for i in range(10)]
    assert 1 < peak[0] <= SETTINGS.concurrency
    assert all(r["trace"][-1]["stage"] == "demo" and r["trace"][-1]["status"] == "ok" for r in out)
    provenance = out[0]["trace"][-1]["provenance"]
    assert provenance["backend"] == "embedded" and provenance["machine"]["cpus"] >= 1
    assert "mimo-core" in provenance["versions"] and provenance["models"] == []


def test_what_a_kept_measurement_is_valid_for_names_the_engine_version_or_the_endpoint(monkeypatch):
    from mimo_core import provenance

    monkeypatch.setattr(provenance, "package_version", lambda name: {"mimo-engine": "9.9"}.get(name))
    assert provenance.measured_on(SETTINGS) == "embedded mimo-engine 9.9"  # a new engine measures again
    remote = Settings(base_url="http://10.0.0.1:8000/v1", model="m")
    assert provenance.measured_on(remote) == "http://10.0.0.1:8000/v1"


def test_sync_stage_runs_off_the_event_loop():
    threads = set()

    def process(record, ctx):
        threads.add(threading.current_thread().name)
        record.verdict["seen"] = True

    code, out = _run(process, _lines(3))
    assert code == 0 and all(r["verdict"]["seen"] for r in out)
    assert threading.main_thread().name not in threads


def test_a_failing_record_gets_an_error_and_the_stream_goes_on():
    def process(record, ctx):
        if record.id == "r1":
            raise TimeoutError("backend down after retries")
        record.consensus["answer"] = "ok"

    code, out = _run(process, _lines(3))
    assert code == 0 and len(out) == 3
    assert out[1]["error"] == "demo: TimeoutError: backend down after retries"
    assert out[1]["trace"][-1]["status"] == "error"
    assert out[0]["error"] is None and out[2]["consensus"]["answer"] == "ok"


def test_disabled_component_runs_the_baseline_with_status_baseline():
    calls = []
    code, out = _run(
        lambda r, c: calls.append(("full", r.id)),
        _lines(1) + _lines(1, config={"disabled": ["spec-reasoner"]}).replace('"r0"', '"r9"'),
        component="spec-reasoner",
        baseline=lambda r, c: calls.append(("baseline", r.id)),
    )
    assert code == 0
    assert calls == [("full", "r0"), ("baseline", "r9")]
    assert [r["trace"][-1]["status"] for r in out] == ["ok", "baseline"]


def test_bad_input_stops_with_exit_2_after_writing_earlier_records(capsys):
    text = _lines(2) + '{"id": "x", "domain": "math"}\n' + _lines(2)
    code, out = _run(lambda r, c: None, text)
    assert code == 2
    assert [r["id"] for r in out] == ["r0", "r1"]
    assert capsys.readouterr().err.strip() == "demo: error: line 3: missing task"


def test_unknown_fields_pass_through_and_trace_appends():
    line = json.dumps({"id": "a", "domain": "general", "task": "t", "extra_tool": {"k": [1, 2]},
                       "trace": [{"stage": "before", "status": "ok", "started_at": 1, "ended_at": 2, "wall_s": 1}]})
    code, out = _run(lambda r, c: None, line + "\n")
    assert out[0]["extra_tool"] == {"k": [1, 2]}
    assert [t["stage"] for t in out[0]["trace"]] == ["before", "demo"]


class _CountingClient:
    """Control-flow stand-in: only what StageContext needs to count usage."""

    async def chat(self, messages, **kwargs):
        return Completion(["96"], ["stop"], "m", Usage(1, 40, 2), 0.01)


def test_context_counts_calls_and_tokens_into_the_trace():
    async def process(record, ctx):
        await ctx.chat([{"role": "user", "content": record.task}])
        await ctx.chat([{"role": "user", "content": record.task}])

    from mimo_core import stage

    record = stage.TaskRecord(id="r", domain="math", task="t")
    ctx = StageContext(SETTINGS, lambda: _CountingClient())
    asyncio.run(stage.process_record("demo", record, process, ctx))
    entry = record.trace[-1]
    assert (entry.calls, entry.prompt_tokens, entry.completion_tokens) == (2, 80, 4)
    assert entry.ended_at >= entry.started_at


def test_one_slow_record_does_not_hold_the_others_back():
    # One record in four takes 1 s, the rest 0.1 s: with 4 always in flight, 16 records take about
    # (4 * 1.0 + 12 * 0.1) / 4 = 1.3 s; a window that waits for its oldest record takes 4 s.
    async def process(record, ctx):
        await asyncio.sleep(1.0 if int(record.id[1:]) % 4 == 0 else 0.1)

    started = time.monotonic()
    code, out = _run(process, _lines(16), concurrency=4)
    elapsed = time.monotonic() - started
    assert code == 0 and [r["id"] for r in out] == [f"r{i}" for i in range(16)]
    assert elapsed < 1.5 * 1.3, f"{elapsed:.2f} s for an ideal of 1.3 s"


def test_the_reorder_buffer_is_bounded():
    # The first record never finishes until the others have been read as far as the buffer allows.
    read = []
    release = asyncio.Event()

    def source():
        for i in range(100):
            read.append(i)
            yield json.dumps({"id": f"r{i}", "domain": "math", "task": "t"}) + "\n"

    async def process(record, ctx):
        if record.id == "r0":
            for _ in range(50):
                await asyncio.sleep(0.01)
            release.set()
            high_water.append(len(read))
        await release.wait()

    high_water = []
    out = io.StringIO()
    code = run_stage("demo", process, source=source(), sink=out, settings=SETTINGS, concurrency=2)
    assert code == 0 and len(out.getvalue().splitlines()) == 100
    assert high_water[0] <= 2 * REORDER_FACTOR + 1
