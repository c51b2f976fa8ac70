"""The real embedded engine (smollm2-135m as oracle and draft) and the quickstart's scripts as a user runs them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mimo_core import daemon
from mimo_core.testing import private_engine_settings

FOLDER = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def engine_settings(tmp_path_factory):
    """A private engine state on the real models for the whole session, stopped at its end."""
    settings = private_engine_settings(tmp_path_factory.mktemp("engine"))
    yield settings
    daemon.stop_engine(settings)


def _script_env(settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIMO_")}
    return {**env, **settings.to_env(), **extra}


def _run_script(name: str, *args: str, env: dict[str, str], cwd: Path, timeout: float = 600,
                **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(FOLDER / f"{name}.py"), *args], env=env, cwd=cwd, text=True,
                          capture_output=True, timeout=timeout, **kwargs)


@pytest.fixture
def script_env():
    """The environment of a script run: no MIMO_* setting of the developer's; the given settings instead."""
    return _script_env


@pytest.fixture
def run_script():
    """`python unified-pipeline/NAME.py ARGS` in `cwd` (away from the repository's .env), as a user types it."""
    return _run_script
