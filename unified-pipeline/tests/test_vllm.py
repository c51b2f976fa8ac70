"""The pipeline against vLLM's OpenAI-compatible server (its CPU build) on smollm2-135m exported by
`mimo-engine export-hf`: the scale-out path, tested. Runs where MIMO_TEST_VLLM_PYTHON names an interpreter in which
vLLM imports (.ci/run installs one); skips, saying why, elsewhere."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from ds_benchmark.results import Results
from mimo_core.record import TaskRecord, read_records
from mimo_core.testing import TEST_MODEL
from mimo_core.tools import tool_command
from unified_pipeline.benchmark import RunFiles

pytestmark = pytest.mark.model
STARTUP_TIMEOUT_S = 240  # measured: ready after 45-75 s on 2 cores with --enforce-eager
KEY = "sk-not-needed"
REFUSED_N = "the backend refused n > 1"


def _log_tail(path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def vllm_server(vllm_python, tmp_path_factory):
    """vLLM serving smollm2-135m (exported to a Hugging Face folder) on a free local port, every cache of its own in
    the module's folder; its base URL, and a model cache folder the module's runs share (the spec-reasoner's
    calibration against this server is measured once)."""
    folder = tmp_path_factory.mktemp("vllm")
    model = folder / "smollm2-hf"
    export = subprocess.run([sys.executable, "-m", "mimo_engine", "export-hf", TEST_MODEL, str(model)],
                            capture_output=True, text=True, timeout=600)
    assert export.returncode == 0, export.stderr
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    caches = folder / "caches"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MIMO_")}, "HF_HUB_OFFLINE": "1",
           "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CACHE_ROOT": str(caches / "vllm"), "HF_HOME": str(caches / "hf"),
           "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"), "XDG_CACHE_HOME": str(caches / "xdg"),
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    log = folder / "vllm.log"
    # --block-size 32: the CPU build's default of 128 caches no prefix shorter than 129 tokens, and a record's
    # shared prefix is 60-200 tokens; 32 is the smallest its attention kernel takes (16 fails at start).
    command = [vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--served-model-name",
               TEST_MODEL, "--dtype", "float32", "--max-model-len", "2048", "--block-size", "32",
               "--enable-prefix-caching", "--enable-prompt-tokens-details", "--enforce-eager", "--host", "127.0.0.1",
               "--port", str(port)]
    with log.open("wb") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2)
                break
            except OSError:
                alive = server.poll() is None
                assert alive and time.monotonic() < deadline, \
                    f"vLLM {'exited' if not alive else 'did not start in time'}; its log ends:\n{_log_tail(log)}"
                time.sleep(1)
        yield url, folder / "cache"
    finally:
        server.terminate()  # vLLM stops its engine-core and worker processes on SIGTERM (measured: about 3 s)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)  # the session it was started in: its children too
            server.wait()


@pytest.fixture
def vllm_env(vllm_server):
    """A script's environment against the vLLM server: its URL, smollm2-135m as oracle and draft, a key."""
    url, cache = vllm_server
    return {"PATH": "", "MIMO_BASE_URL": url, "MIMO_MODEL": TEST_MODEL, "MIMO_DRAFT_MODEL": TEST_MODEL,
            "MIMO_API_KEY": KEY, "MIMO_CACHE_DIR": str(cache)}


def _check_prefix_cache(record: TaskRecord) -> None:
    """The KV plan warmed the record's prefix in vLLM's prefix cache, and the later stages' calls say what it served
    them: vLLM reports cached tokens (llama.cpp's server reports none)."""
    assert record.kv["backend"] == "server" and record.kv["warmed"] and record.kv["cached_tokens"] is not None
    later = {e.stage: e.served for e in record.trace
             if e.stage in ("spec-reasoner", "multi-agent-orchestrator") and e.served and e.served.calls}
    assert all(s.reported["cached_tokens"] and s.cached_tokens is not None for s in later.values()), record.id
    assert all(s.reported["policies"] is False for s in later.values())  # no engine report on vLLM
    agents = later["multi-agent-orchestrator"]  # every agent's prompt starts with the warmed prefix
    assert 0 < agents.cached_tokens < agents.prompt_tokens, record.id


def _check_forks(record: TaskRecord, served_calls: int) -> None:
    """vLLM refuses n > 1 only at temperature 0; the orchestrator forks at 0.8 and more, so each fork's branches
    were one request: the stage's calls are its agents' plus one per fork."""
    agents = record.consensus["agents"]
    unforked = [a for a in agents if a["forked_from"] is None and a["strategy"] != "spec-reasoner"]
    forks = {a["forked_from"] for a in agents if a["forked_from"] is not None}
    assert not any(REFUSED_N in note for note in record.consensus["notes"])
    assert served_calls == len(unforked) + len(forks)
    assert all(a["temperature"] >= 0.8 for a in agents if a["forked_from"] is not None)


def test_the_pipeline_runs_on_vllm_with_its_prefix_cache_and_scoring(vllm_server, vllm_env, run_script, tmp_path):
    url, cache = vllm_server
    done = run_script("run_pipeline", "--task", "What is 12 * 8?", "--domain", "math", "--reference", "96", "--json",
                      env=vllm_env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    record = TaskRecord.from_dict(json.loads(done.stdout))
    assert record.error is None and record.answer and record.verdict["correct"] in (True, False)
    assert all(e.status == "ok" for e in record.trace)
    assert {e.provenance["backend"] for e in record.trace} == {"remote"}
    assert {e.provenance["endpoint"] for e in record.trace} == {url.removesuffix("/v1")}
    # what a client cannot do on someone else's server is said, not faked
    assert record.precision["policy"] == "native" and "one precision" in record.precision["reason"]
    assert record.reasoning["speculation"]["settable"] is False
    _check_prefix_cache(record)
    # the spec-reasoner scored steps through vLLM's completions: top logprobs of a rating, and prompt logprobs
    # of a step's tokens (its calibration's two criteria, measured on this server)
    drafting = record.reasoning["step_drafting"]
    assert "no completions logprobs" not in drafting["reason"]
    assert all(isinstance(drafting["discrimination"][c], float) for c in ("rating", "logprob"))
    # the agents: confidences from logprobs, prefix-cache counts, forks sampled as vLLM allows
    consensus = record.consensus
    assert consensus["measure"] != "none"  # vLLM streams top logprobs: every agent's confidence was measured
    voters = [a for a in consensus["agents"] if a["status"] == "done" and a["strategy"] != "spec-reasoner"]
    assert voters and all(a["tokens"] > 0 and a["cached_tokens"] is not None for a in voters)
    (orchestrator,) = [e for e in record.trace if e.stage == "multi-agent-orchestrator"]
    _check_forks(record, orchestrator.served.calls)
    assert KEY not in done.stdout + done.stderr  # the key is never written out
    assert not (cache / "engine").exists()  # no embedded engine was started


def test_the_spec_reasoner_verifies_drafted_steps_with_vllms_prompt_logprobs(vllm_env, tmp_path):
    record = {"schema": "mimo.task/1", "id": "math-vllm", "domain": "math",
              "task": "Tom has 49 apples and buys 30 more. How many apples does he have?"}
    done = subprocess.run([tool_command("spec-reasoner"), "reason", "--step-drafting", "always", "--criterion",
                           "logprob"], input=json.dumps(record) + "\n", env=vllm_env, cwd=tmp_path, text=True,
                          capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (out,) = [TaskRecord.from_dict(json.loads(line)) for line in done.stdout.splitlines()]
    reasoning = out.reasoning
    assert out.error is None and reasoning["scoring"] == "completions" and reasoning["criterion"] == "logprob"
    assert reasoning["drafted_steps"] > 0 and reasoning["verify_requests"] > 0
    # every drafted step got the oracle's score: its tokens' mean log-probability, read from vLLM's prompt
    # logprobs (echo) at the step's place in the text (None where they could not be placed)
    scores = [s for r in reasoning["round_log"] for s in r["scores"]]
    assert len(scores) == reasoning["drafted_steps"] and all(s is not None and s <= 0 for s in scores)
    assert not reasoning["notes"]  # vLLM took the requests as they were: nothing done differently


def test_a_benchmark_of_three_tasks_on_vllm(vllm_env, run_script, tmp_path):
    started = time.monotonic()
    done = run_script("run_benchmark", "--n", "3", "--domains", "math", "coding", "triage", "--out", "vllm-n3.json",
                      env=vllm_env, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr
    files = RunFiles(tmp_path / "vllm-n3.json")
    results = Results.load(files.results)
    records = list(read_records(files.records.open()))
    assert len(records) == 3 and {r.domain for r in records} == {"math", "coding", "triage"}
    for record in records:
        assert record.error is None and all(e.status == "ok" for e in record.trace), record.id
        _check_prefix_cache(record)
        (orchestrator,) = [e for e in record.trace if e.stage == "multi-agent-orchestrator"]
        _check_forks(record, orchestrator.served.calls)
    (config,) = results.configurations
    assert config.figures.n == 3 and config.figures.errors == 0
    served = config.served
    assert served.reported["cached_tokens"] and 0 < served.cached_share < 1  # what vLLM's prefix cache served
    print(f"3-task benchmark on vLLM: {time.monotonic() - started:.0f} s, D/s {config.figures.ds}")
