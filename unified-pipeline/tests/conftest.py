"""The quickstart's scripts as a user runs them (the private engine is mimo_core.testing's `engine_settings`)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

FOLDER = Path(__file__).resolve().parents[1]


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
