"""The shared client after the embedded engine has gone: one caller restarts it, the others reuse the new client."""

import asyncio
import os
import signal
import time

import pytest

from mimo_core import daemon
from mimo_core.client import LLMClient

pytestmark = pytest.mark.model


@pytest.fixture
def settings(private_engine):
    return private_engine(concurrency=8)


def test_eight_concurrent_calls_after_the_engine_exited_start_one_engine(settings, monkeypatch):
    starts = []
    real_start = daemon._start
    monkeypatch.setattr(daemon, "_start", lambda *args: starts.append(1) or real_start(*args))
    messages = [{"role": "user", "content": "Say hi."}]

    async def go():
        client = LLMClient(settings)
        try:
            await client.chat(messages, max_tokens=2)
            first = daemon.read_state(settings)
            os.kill(first.pid, signal.SIGTERM)  # as on its idle timeout: the engine exits, its state file stays
            deadline = time.monotonic() + 30
            while daemon.is_engine_process(first.pid) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert not daemon.is_engine_process(first.pid)
            replies = await asyncio.gather(*(client.chat(messages, max_tokens=2) for _ in range(8)))
            return first, replies
        finally:
            await client.close()

    first, replies = asyncio.run(go())
    assert len(replies) == 8 and all(r.usage.completion_tokens >= 1 for r in replies)
    assert len(starts) == 2  # the first engine, and exactly one replacement
    assert daemon.read_state(settings).pid != first.pid
