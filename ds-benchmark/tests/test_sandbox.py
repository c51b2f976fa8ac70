"""Hostile code through the real sandbox, in every isolation mode this machine allows: each must be contained within
the time limit and leave no trace outside its temporary directory."""

import os
import socket
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ds_benchmark.sandbox import Limits, available_isolations, run_python

LIMITS = Limits(wall_s=3.0, cpu_s=3)
SLACK_S = 3.0  # killing the group and removing the directory
MODES = available_isolations()


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


@pytest.fixture
def run(mode):
    """Run a program in `mode`, then check it stayed within the time limit and left no sandbox directory behind."""
    tmp = Path(tempfile.gettempdir())

    def go(source: str):
        before = set(tmp.glob("ds-sandbox-*"))
        started = time.monotonic()
        result = run_python(source, LIMITS, isolation=mode)
        assert time.monotonic() - started < LIMITS.wall_s + SLACK_S
        assert set(tmp.glob("ds-sandbox-*")) == before
        assert result.isolation == mode
        return result

    return go


def alive(token: str) -> list[str]:
    """Processes whose command line carries `token`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if token.encode() in cmdline.read_bytes():
                found.append(cmdline.parent.name)
        except OSError:
            continue
    return found


def test_the_machine_has_an_isolating_mode():
    assert MODES and MODES[0] in ("bwrap", "unshare"), f"only {MODES}: install bubblewrap"


def test_a_harmless_program_passes(run):
    assert run("print('hello')").status == "passed"


def test_infinite_loop_is_killed(run):
    assert run("while True:\n    pass\n").status == "timed out"


def test_fork_bomb_is_bounded_and_reaped(run):
    token = uuid.uuid4().hex
    result = run(
        "import os, sys, time\n"
        "spawned = 0\n"
        "for _ in range(500):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        f"            os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', '{token}'])\n"
        "        spawned += 1\n"
        "    except OSError:\n"
        "        break\n"
        "print('spawned', spawned, flush=True)\n"
        "time.sleep(60)\n"
    )
    assert result.status == "timed out"
    spawned = int(result.output.split()[-1])
    assert 0 < spawned < LIMITS.processes
    deadline = time.monotonic() + 2
    while alive(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive(token) == []


def test_huge_allocation_fails_fast(run):
    result = run("block = bytearray(10 * 2**30)\nprint('allocated')\n")
    assert result.status == "failed" and "MemoryError" in result.output


def test_no_writes_outside_its_directory(run, tmp_path):
    targets = [Path.home() / f"ds-escape-{uuid.uuid4().hex}", tmp_path / "escape", Path("/tmp") / uuid.uuid4().hex]
    result = run(
        "import os\n"
        f"for target in {[str(t) for t in targets]!r} + [os.path.expanduser('~/escape')]:\n"
        "    try:\n"
        "        open(target, 'w').write('x')\n"
        "    except OSError as exc:\n"
        "        print('refused', target, exc)\n"
        "open('inside.txt', 'w').write('fine')\n"
    )
    assert result.status == "passed"
    assert not any(t.exists() for t in targets)
    assert not (Path.home() / "escape").exists()


def test_secrets_in_the_environment_are_not_visible(run, monkeypatch):
    secret = "sk-test-" + uuid.uuid4().hex
    monkeypatch.setenv("MIMO_API_KEY", secret)
    result = run(
        "import os, glob\n"
        "print(os.environ.get('MIMO_API_KEY'), dict(os.environ))\n"
        "for path in glob.glob('/proc/*/environ'):\n"
        "    try:\n"
        "        print(open(path, 'rb').read())\n"
        "    except OSError:\n"
        "        pass\n"
    )
    assert result.status == "passed"
    assert "None" in result.output and secret not in result.output


def test_no_network(run, mode):
    if mode == "rlimits-only":
        pytest.skip("rlimits alone cannot take the network away")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.5)
        port = server.getsockname()[1]
        result = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')\n")
        with pytest.raises(socket.timeout):
            server.accept()
    assert result.status == "failed" and "connected" not in result.output


def test_killing_the_parent_kills_neither_pytest_nor_the_harness(run):
    result = run("import os\nos.kill(os.getppid(), 9)\nimport time\ntime.sleep(1)\n")
    assert result.status in ("failed", "passed")
    os.kill(os.getpid(), 0)  # still here
    assert run("print('still works')").status == "passed"


def test_a_fork_bomb_does_not_starve_a_run_beside_it(mode):
    bomb = "import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.01)\n"
    with ThreadPoolExecutor(2) as pool:
        bombing = pool.submit(run_python, bomb, LIMITS, mode)
        time.sleep(1.0)
        beside = run_python("import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'pass'], check=True)\n",
                            LIMITS, mode)
        assert bombing.result().status == "timed out"
    assert beside.status == "passed", beside.output


def test_disk_is_bounded_under_bwrap(run, mode):
    if mode != "bwrap":
        pytest.skip("only bwrap gives the program a size-limited filesystem")
    result = run("for i in range(100):\n    open(f'f{i}', 'wb').write(bytes(15 << 20))\n")
    assert result.status == "failed" and "No space left on device" in result.output
