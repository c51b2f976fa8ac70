"""The shared embedded engine, for real: started on demand, shared by processes, restarted after a crash."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

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
