"""The shared embedded engine, for real: started on demand, shared by processes, restarted after a crash, serving
the models the settings name, never replaced while busy, and logging what it does."""

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

pytestmark = pytest.mark.model
MODEL = "smollm2-135m"


@pytest.fixture
def settings(engine_settings):
    return engine_settings()


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
s = load_settings(overrides={"cache_dir": sys.argv[1], "engine_idle_timeout_s": 120.0}, env={}, dotenv_path=None)
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


def test_the_engine_serves_the_settings_models_and_logs_what_it_does(engine_settings):
    settings = engine_settings(model="qwen2.5-coder-0.5b", draft_model=MODEL)
    daemon.ensure_engine(settings)
    health = daemon.engine_health(daemon.read_state(settings))
    assert health["models_served"] == ["qwen2.5-coder-0.5b", MODEL] and health["models_loaded"] == []  # lazily
    reply = _ask(engine_settings(model=MODEL))  # the draft model, as spec-reasoner asks for it: served, same engine
    assert reply.engine["load_s"] > 0  # this call waited for the model to load, and says so
    log = (daemon.engine_dir(settings) / "engine.log").read_text()
    assert "mimo-engine serving http://127.0.0.1:" in log and f"on first request: qwen2.5-coder-0.5b, {MODEL}" in log
    assert f"loaded {MODEL} in" in log and '"POST /v1/chat/completions" 200' in log


def test_settings_naming_another_model_get_an_engine_serving_both(engine_settings):
    first = engine_settings()
    daemon.ensure_engine(first)
    old = daemon.read_state(first)
    other = engine_settings(model="qwen2.5-coder-0.5b")
    url = daemon.ensure_engine(other)
    new = daemon.read_state(other)
    assert new.pid != old.pid and not daemon.is_engine_process(old.pid)  # the old one was idle: stopped
    assert daemon.engine_health(new)["models_served"] == ["qwen2.5-coder-0.5b", MODEL]
    assert daemon.ensure_engine(first) == url  # it serves the first settings too: no back and forth


def test_a_busy_engine_is_neither_taken_for_hung_nor_stopped(engine_settings):
    settings = engine_settings()
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
        daemon.ensure_engine(engine_settings(model="qwen2.5-coder-0.5b"))  # needs a new engine...
        assert daemon.read_state(settings).pid != state.pid
        assert daemon.is_engine_process(state.pid)  # ...but the busy one finishes its work
    finally:
        os.kill(state.pid, signal.SIGKILL)  # no longer recorded: the fixture would not stop it
