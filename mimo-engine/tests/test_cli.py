"""The `mimo-engine` command line: help, one-line errors with exit code 2, `models`, `pull`, and the idle exit."""

import json
import subprocess
import sys

import httpx
import pytest

REGISTRY = {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}


def mimo_engine(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mimo_engine", *args], capture_output=True, text=True, timeout=timeout
    )


def test_help_names_every_command():
    result = mimo_engine("--help")
    assert result.returncode == 0
    for command in ("serve", "pull", "models", "bench"):
        assert command in result.stdout
    assert "--max-queue" in mimo_engine("serve", "--help").stdout


@pytest.mark.parametrize(
    "args",
    [("serve", "--port", "abc"), ("serve", "--max-batch-size", "0"), ("serve", "--model", "nope"), ("pull", "nope"),
     ("frobnicate",)],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_code_2(args):
    result = mimo_engine(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("mimo-engine: error:")


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


def test_serve_exits_by_itself_when_idle(start_server):
    url, process = start_server("--idle-timeout", "2")
    assert httpx.get(f"{url}/health").json()["models_loaded"] == []  # models load on first use
    assert process.wait(timeout=20) == 0
