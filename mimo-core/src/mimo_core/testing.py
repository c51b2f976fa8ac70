"""The test suites' shared pytest plugin: the model the tests run, private embedded engines, records through a pipe.

The repository's root conftest registers it (`pytest_plugins`), so every package's tests get its fixtures in the
one session that pytest.ini runs: `engine_settings` (a private engine per package), `private_engine` (a factory of
engines of a test's own, stopped after it), `vllm_python` (the interpreter of the tests against vLLM) and the helper
`pipe`."""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from . import daemon
from .contract import Contract
from .settings import Settings, load_settings

TEST_MODEL = "smollm2-135m"  # the model every end-to-end test runs
TEST_ORACLE = "qwen2.5-coder-0.5b"  # where a test needs a second, larger model
PRIVATE_IDLE_TIMEOUT_S = 120.0  # a private engine left behind by a killed test exits on its own soon after
VLLM_PYTHON = "MIMO_TEST_VLLM_PYTHON"  # an interpreter in which vLLM imports (with torch and transformers)


def private_engine_settings(folder: Path, **overrides: Any) -> Settings:
    """Settings whose engine state lives in `folder` while the model files are the real cache's (nothing is pulled
    twice); oracle and draft are TEST_MODEL unless `overrides` say otherwise. The caller stops the engine."""
    folder = load_settings().with_cache_dir(folder).cache_dir
    values = {"cache_dir": folder, "model": TEST_MODEL, "draft_model": TEST_MODEL, "engine_idle_timeout_s": 300.0,
              **overrides}
    return load_settings(overrides=values, env={}, dotenv_path=None)


def fresh_calibrations(settings: Settings) -> Settings:
    """The settings with a calibrations folder of their own, empty (private engines otherwise share the real
    cache's), so that a test sees what a first run measures."""
    folder = settings.cache_dir / "calibrations"
    if folder.is_symlink():
        folder.unlink()
    folder.mkdir(exist_ok=True)
    for kept in folder.iterdir():
        kept.unlink()
    return settings


def pipe(run: Callable[..., int], records: Iterable[dict | Contract | str], **kwargs: Any) -> tuple[int, list[dict]]:
    """Feed `records` (dicts, contracts or JSON lines) as JSONL to `run(source=..., sink=..., **kwargs)`, a stage's
    loop such as `run_stage`; its exit code and the records it wrote, as dicts."""
    lines = (r if isinstance(r, str) else json.dumps(r.to_dict() if isinstance(r, Contract) else r) for r in records)
    sink = io.StringIO()
    code = run(source=io.StringIO("".join(line if line.endswith("\n") else line + "\n" for line in lines)),
               sink=sink, **kwargs)
    return code, [json.loads(line) for line in sink.getvalue().splitlines()]


@pytest.fixture(scope="session")
def _package_engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Settings]]:
    engines: dict[str, Settings] = {}
    yield engines
    for settings in engines.values():
        daemon.stop_engine(settings)


@pytest.fixture(scope="module")
def engine_settings(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                    _package_engines: dict[str, Settings]) -> Settings:
    """A private engine on the real models (TEST_MODEL as oracle and draft) for a package's tests (the folder
    above `tests/`), kept for the session and stopped at its end."""
    # One per package, not one for the session: a package's tests may change its engine's folder (a test empties
    # its calibrations to see a first run's), which must not reach another package's tests.
    package = request.path.parent.parent.name
    if package not in _package_engines:
        _package_engines[package] = private_engine_settings(tmp_path_factory.mktemp(f"engine-{package}"))
    return _package_engines[package]


@pytest.fixture
def private_engine(tmp_path: Path) -> Iterator[Callable[..., Settings]]:
    """A factory of private-engine settings of the test's own (see `private_engine_settings`; overrides as keyword
    arguments); every engine started under them is stopped at the end of the test."""
    made: list[Settings] = []

    def make(**overrides: Any) -> Settings:
        made.append(private_engine_settings(tmp_path, **{"engine_idle_timeout_s": PRIVATE_IDLE_TIMEOUT_S,
                                                          **overrides}))
        return made[-1]

    yield make
    for settings in made:
        daemon.stop_engine(settings)


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """The interpreter that MIMO_TEST_VLLM_PYTHON names, checked to import vLLM and transformers there; the test
    skips, saying why, where it is not set or they do not import. The tests install nothing: .ci/run sets it up."""
    python = os.environ.get(VLLM_PYTHON)
    if not python:
        pytest.skip(f"{VLLM_PYTHON} is not set (an interpreter in which vLLM imports: .ci/run installs one)")
    try:
        done = subprocess.run([python, "-c", "import vllm, transformers"], capture_output=True, text=True,
                              timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"{VLLM_PYTHON}={python} cannot import vLLM: {exc}")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        pytest.skip(f"vLLM does not import in {VLLM_PYTHON}={python}: {last}")
    return python
