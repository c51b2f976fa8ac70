"""The pipeline against a third-party OpenAI-compatible server: llama.cpp's (llama-cpp-python) on the same GGUF."""

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from mimo_core.record import TaskRecord
from mimo_core.settings import load_settings
from mimo_core.testing import TEST_MODEL
from mimo_engine.pull import ensure_model

pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                       reason="llama-cpp-python[server] is not installed (it builds from source: .ci/run installs it)"),
]


@pytest.fixture(scope="module")
def llama_server():
    """llama.cpp's OpenAI-compatible server on smollm2-135m's GGUF, on a free local port."""
    gguf = ensure_model(TEST_MODEL, load_settings(env={}, dotenv_path=None).cache_dir)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias",
                               TEST_MODEL, "--chat_format", "chatml", "--n_ctx", "4096", "--host", "127.0.0.1",
                               "--port", str(port), "--interrupt_requests", "False"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2)
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "llama.cpp's server did not start"
            time.sleep(0.5)
    yield url
    server.terminate()
    server.wait(timeout=30)


def test_the_pipeline_answers_through_llama_cpp_and_says_what_does_not_apply(llama_server, run_script, tmp_path):
    env = {"PATH": "", "MIMO_BASE_URL": llama_server, "MIMO_MODEL": TEST_MODEL, "MIMO_API_KEY": "sk-not-needed",
           "MIMO_CACHE_DIR": str(tmp_path / "cache")}
    done = run_script("run_pipeline", "--task", "What is 12 * 8?", "--domain", "math", "--reference", "96", "--json",
                      env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    record = TaskRecord.from_dict(json.loads(done.stdout))
    assert record.error is None and record.answer and record.verdict["correct"] in (True, False)
    # what a client can do on someone else's server it does; what it cannot is said, not faked
    assert record.precision["policy"] == "native" and "one precision" in record.precision["reason"]  # no mapping
    assert record.kv["backend"] == "server" and record.kv["warmed"]  # the server's own prefix cache, warmed
    assert record.reasoning["speculation"]["settable"] is False
    later = [e.served for e in record.trace if e.stage in ("spec-reasoner", "multi-agent-orchestrator") and e.served]
    assert later and all(s.calls > 0 for s in later)
    if record.kv["cached_tokens"] is None:  # this server reports no cached tokens: said, never counted as 0
        assert "reports no cached tokens" in record.kv["reason"]
        assert all(s.cached_tokens is None and s.reported["cached_tokens"] is False for s in later)
    assert all(s.reported["policies"] is False and s.policies is None for s in later)  # no engine report here
    assert {e.provenance["backend"] for e in record.trace} == {"remote"}
    voters = [a for a in record.consensus["agents"] if a["status"] == "done" and a["strategy"] != "spec-reasoner"]
    assert voters and all(a["tokens"] > 0 for a in voters)  # llama.cpp ignores n: each agent had its own request
    assert {e.provenance["endpoint"] for e in record.trace} == {llama_server.removesuffix("/v1")}
    assert "sk-not-needed" not in done.stdout + done.stderr  # the key is never written out
    assert not (tmp_path / "cache" / "engine").exists()  # no embedded engine was started
