"""A live `mimo-engine serve` process for the end-to-end tests."""

import socket
import subprocess
import sys
import tempfile
import time

import httpx
import pytest

STARTUP_TIMEOUT_S = 600  # a fresh cache pulls the model from PyPI first


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def start_server():
    """A function that starts `mimo-engine serve ARGS` on a free port and returns (base URL, process) once healthy.

    Every process it started is stopped at the end of the session.
    """
    started: list[tuple[subprocess.Popen, object]] = []

    def start(*args: str) -> tuple[str, subprocess.Popen]:
        port = _free_port()
        log = tempfile.TemporaryFile()
        command = [sys.executable, "-m", "mimo_engine", "serve", "--port", str(port), *args]
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        started.append((process, log))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"mimo-engine serve did not start:\n{log.read().decode(errors='replace')[-3000:]}")
            time.sleep(0.2)
        return url, process

    yield start
    for process, log in started:
        _stop(process)
        log.close()
