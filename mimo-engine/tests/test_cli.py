"""The `mimo-engine` command line: help, version, one-line errors with exit code 2, `models`, `pull`, a model that
cannot be loaded at start, and the idle exit."""

import json
import os
import subprocess
import sys
from importlib import metadata

import httpx
import pytest

REGISTRY = {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}


def mimo_engine(*args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mimo_engine", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_help_names_every_command():
    result = mimo_engine("--help")
    assert result.returncode == 0
    for command in ("serve", "pull", "models", "bench"):
        assert command in result.stdout
    serve_help = mimo_engine("serve", "--help").stdout
    for option in ("--max-queue", "--allow-pull", "--max-body-mib", "--drain-timeout", "--quiet", "413"):
        assert option in serve_help


def test_version():
    result = mimo_engine("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"mimo-engine {metadata.version('mimo-engine')}"


@pytest.mark.parametrize(
    "args",
    [("serve", "--port", "abc"), ("serve", "--max-batch-size", "0"), ("serve", "--model", "nope"), ("pull", "nope"),
     ("serve", "--allow", "nope"), ("serve",), ("frobnicate",)],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_code_2(args):
    result = mimo_engine(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("mimo-engine: error:")


@pytest.mark.parametrize(
    "args, file, says",
    [(("serve", "--model"), "gemma2", "GGUF architecture 'gemma2' is not supported (supported: llama, qwen2)"),
     (("serve", "-m", "smollm2-135m", "--draft-model"), "gemma2", "GGUF architecture 'gemma2' is not supported"),
     (("serve", "--allow"), "text", "not a GGUF file"),
     (("bench", "--model"), "missing", "No such file or directory"),
     (("pull",), "gemma2", "only registry models are pulled")],
)  # fmt: skip
def test_a_gguf_path_the_engine_cannot_take_is_one_line_and_exit_code_2(args, file, says, unsupported_gguf, tmp_path):
    (tmp_path / "notes.gguf").write_text("not a model\n")
    path = {"gemma2": unsupported_gguf, "text": tmp_path / "notes.gguf", "missing": tmp_path / "missing.gguf"}[file]
    result = mimo_engine(*args, str(path))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("mimo-engine: error:")
    assert f"{path}: {says}" in result.stderr


def test_models_lists_the_registry_as_json():
    listed = json.loads(mimo_engine("models").stdout)
    assert {m["name"] for m in listed} == REGISTRY
    for model in listed:
        assert model["size_bytes"] > 0 and isinstance(model["pulled"], bool) and "path" in model


@pytest.mark.model
def test_pull_prints_the_verified_path():
    result = mimo_engine("pull", "smollm2-135m", timeout=600)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["path"].endswith(".gguf")


def test_a_model_that_cannot_be_loaded_at_start_is_one_line_and_exit_code_1(no_pulls):
    result = mimo_engine("serve", "--model", "qwen2.5-coder-1.5b", env=no_pulls)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "mimo-engine: error: the model `qwen2.5-coder-1.5b` could not be loaded; the server's log says why")
    assert "No matching distribution" in result.stderr  # pip's reason is in the log, above


def test_serve_exits_by_itself_when_idle(start_server):
    server = start_server("--allow", "smollm2-135m", "--idle-timeout", "2")
    health = httpx.get(f"{server.url}/health").json()
    assert health["models_loaded"] == [] and health["models_served"] == ["smollm2-135m"]  # loaded on first use
    assert server.process.wait(timeout=20) == 0
    assert "idle for 2 s: exiting" in server.log()


@pytest.mark.parametrize(
    "args, env, named",
    [(("--precision-policies", "native,nope"), {}, "MIMO_PRECISION_POLICIES"),
     (("--precision-policies", "Native!"), {}, "--precision-policies"),
     (("--threads", "0"), {}, "--threads"),
     ((), {"MIMO_ENGINE_THREADS": "many"}, "MIMO_ENGINE_THREADS"),
     ((), {"MIMO_PRECISION_POLICIES": "mxfp4,all"}, "MIMO_PRECISION_POLICIES")],
)  # fmt: skip
def test_bad_engine_settings_are_one_line_naming_the_setting(args, env, named):
    result = mimo_engine("serve", "--allow", "smollm2-135m", *args, env=env)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("mimo-engine: error:")
    assert named in result.stderr


@pytest.mark.model
def test_serve_loads_the_policies_and_threads_it_is_given(start_server):
    server = start_server("--model", "smollm2-135m", "--precision-policies", "native,mxfp4", "--threads", "1",
                          env={"MIMO_PRECISION_POLICIES": "all", "MIMO_ENGINE_THREADS": "2"})  # the flags win
    health = httpx.get(f"{server.url}/health").json()
    assert health["precision_policies"] == ["native", "mxfp4"] and health["threads"] == 1
    assert "precision policies native,mxfp4; kernel threads 1" in server.log()

    def ask(policy: str) -> httpx.Response:
        return httpx.post(f"{server.url}/v1/completions", timeout=120, json={
            "model": "smollm2-135m", "prompt": "1, 2,", "max_tokens": 1, "mimo": {"precision": {"policy": policy}}})

    assert ask("experts-mxfp4").status_code == 200  # its formats (native and mxfp4) are held
    refused = ask("f32")  # float32 weights were not loaded
    assert refused.status_code == 400 and "native, mxfp4" in refused.json()["error"]["message"]


@pytest.mark.model
def test_a_load_and_a_request_longer_than_the_idle_timeout_are_not_idle(start_server):
    # --drain-timeout 0: were the server to take the load or the generation for idle time, it would cut the request
    server = start_server("--allow", "smollm2-135m", "--idle-timeout", "0.5", "--drain-timeout", "0")
    ask = {"model": "smollm2-135m", "prompt": "1, 2, 3,", "max_tokens": 200, "temperature": 0}
    response = httpx.post(f"{server.url}/v1/completions", json=ask, timeout=300)
    assert response.status_code == 200, response.text
    report = response.json()["mimo"]
    assert report["load_s"] > 0 and report["completion_tokens"] > 0
    assert server.process.wait(timeout=30) == 0
    assert "idle for 0.5 s: exiting" in server.log()
