"""Hostile programs through the real sandbox: each must be contained within the time limit and leave no trace.

The same file runs a second time as an unprivileged user (test_unprivileged.py), where bwrap takes its other mode."""

import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ds_benchmark.sandbox import (Limits, SandboxUnavailable, require_sandbox, run_python, scrub, seccomp_filter,
                                  secret_values)

LIMITS = Limits(wall_s=3.0, cpu_s=3)
SLACK_S = 3.0  # killing the sandbox and reading its output


@pytest.fixture(scope="module")
def mode():
    return require_sandbox()


@pytest.fixture
def run(mode):
    """Run a program, then check that it stayed within the time limit and says which mode ran it."""

    def go(source: str, limits: Limits = LIMITS):
        started = time.monotonic()
        result = run_python(source, limits)
        assert time.monotonic() - started < limits.wall_s + SLACK_S
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


def gone(token: str, within_s: float = 2.0) -> bool:
    deadline = time.monotonic() + within_s
    while alive(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(token)


def test_a_harmless_program_passes(run):
    result = run("print('hello')")
    assert (result.status, result.exit_code, result.output) == ("passed", 0, "hello\n")


def test_exit_codes_and_signals_are_reported(run):
    assert run("raise SystemExit(3)").exit_code == 3
    assert run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)").exit_code == -9


def test_infinite_loop_is_killed(run):
    result = run("while True:\n    pass\n", Limits(wall_s=1.0))
    assert result.status == "timed out" and result.exit_code is None


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
    assert 0 < int(result.output.split()[-1]) < LIMITS.processes
    assert gone(token)


def test_a_setsid_daemon_does_not_outlive_the_run(run):
    token = uuid.uuid4().hex
    result = run(
        "import os, sys\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', '{token}'])\n"
        "    os._exit(0)\n"
        "os.wait()\n"
    )
    assert result.status == "passed"
    assert gone(token)


def test_huge_allocation_fails_fast(run):
    result = run("block = bytearray(10 * 2**30)\nprint('allocated')\n")
    assert result.status == "failed" and "MemoryError" in result.output


def test_no_writes_reach_the_host(run, tmp_path):
    name = f"ds-escape-{uuid.uuid4().hex}"
    places = [Path.home(), tmp_path, Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"), Path("/"), Path("/dev")]
    result = run(
        "import os\n"
        f"for place in {[str(p) for p in places]!r}:\n"
        "    try:\n"
        f"        open(os.path.join(place, {name!r}), 'w').write('x')\n"
        "        print('wrote', place)\n"
        "    except OSError as exc:\n"
        "        print('refused', place, exc.strerror)\n"
    )
    assert result.status == "passed"
    assert not [p for p in places if (p / name).exists()]
    # Inside, only its own tmpfs mounts take writes; what it wrote there went with the sandbox.
    assert {line.split()[1] for line in result.output.splitlines() if line.startswith("wrote")} <= {"/tmp", "/dev/shm"}


def test_disk_is_bounded(run):
    result = run("for i in range(100):\n    open(f'f{i}', 'wb').write(bytes(15 << 20))\n")
    assert result.status == "failed" and "No space left on device" in result.output


def test_secrets_in_the_environment_are_not_visible(run, monkeypatch):
    secret = "sk-test-" + uuid.uuid4().hex
    monkeypatch.setenv("MIMO_API_KEY", secret)
    result = run(
        "import os, glob\n"
        "print(os.environ.get('MIMO_API_KEY'), dict(os.environ))\n"
        "for path in glob.glob('/proc/*/environ') + glob.glob('/proc/*/cmdline'):\n"
        "    try:\n"
        "        print(open(path, 'rb').read())\n"
        "    except OSError:\n"
        "        pass\n"
    )
    assert result.status == "passed"
    assert result.output.startswith("None {'PWD': '/sandbox'") and secret not in result.output


def test_output_is_scrubbed_of_the_scorers_secrets(run, monkeypatch, tmp_path):
    """A leak (here: the secrets written into the program itself) never reaches the output kept."""
    key, planted = "sk-test-" + uuid.uuid4().hex, "dotenv-" + uuid.uuid4().hex
    monkeypatch.setenv("MIMO_API_KEY", key)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"SOME_SETTING={planted}\nSHORT=1\n")
    result = run(f"print({key!r}, {planted!r}, 'and 1 more')")
    assert result.output == "[secret] [secret] and 1 more\n"


def test_scrub_removes_the_longest_match_first():
    values = secret_values({"A_TOKEN": "abcdef", "B_SECRET_X": "abcdefgh", "HOME": "/home/someone", "X_KEY": "tiny"})
    assert values == {"abcdef", "abcdefgh"}  # HOME is no secret; 'tiny' is too short to scrub
    assert scrub("xabcdefghx abcdef", values) == "x[secret]x [secret]"


@pytest.mark.parametrize("target", ["('127.0.0.1', PORT)", "'\\0ds-sandbox-test-SUFFIX'"])
def test_no_network(run, target):
    """Neither TCP to the host's loopback nor an abstract unix socket (shared by network namespace) is reachable."""
    suffix = uuid.uuid4().hex
    family = socket.AF_INET if "127" in target else socket.AF_UNIX
    with socket.socket(family) as server:
        server.bind(("127.0.0.1", 0) if family == socket.AF_INET else f"\0ds-sandbox-test-{suffix}")
        server.listen()
        server.settimeout(0.5)
        port = server.getsockname()[1] if family == socket.AF_INET else 0
        address = target.replace("PORT", str(port)).replace("SUFFIX", suffix)
        result = run(f"import socket\ns = socket.socket(socket.{family.name})\ns.settimeout(2)\n"
                     f"s.connect({address})\nprint('connected')\n")
        with pytest.raises(socket.timeout):
            server.accept()
    assert result.status == "failed" and "connected" not in result.output


def test_killing_everything_it_can_kills_neither_pytest_nor_the_harness(run):
    result = run("import os, signal\nos.kill(os.getppid(), 9)\nos.kill(-1, signal.SIGKILL)\nimport time\n"
                 "time.sleep(1)\n")
    assert result.status == "failed"
    os.kill(os.getpid(), 0)  # still here
    assert run("print('still works')").status == "passed"


def test_no_ptrace_and_no_new_namespaces(run):
    result = run(
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print('ptrace', libc.ptrace(16, os.getppid(), 0, 0), libc.ptrace(16, 1, 0, 0))\n"
        "print('unshare', libc.unshare(0x10000000), libc.unshare(0x20000))\n"  # CLONE_NEWUSER, CLONE_NEWNS
    )
    assert result.output.split() == ["ptrace", "-1", "-1", "unshare", "-1", "-1"]


def test_no_seccomp_filter_no_root_mode_on_an_unknown_machine():
    with pytest.raises(SandboxUnavailable, match="no seccomp filter|has none for"):
        seccomp_filter("mips")


def test_a_fork_bomb_does_not_starve_a_run_beside_it(mode):
    bomb = "import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.01)\n"
    with ThreadPoolExecutor(2) as pool:
        bombing = pool.submit(run_python, bomb, Limits(wall_s=2.5, cpu_s=3))
        time.sleep(1.0)
        beside = run_python("import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'pass'], check=True)\n",
                            LIMITS)
        assert bombing.result().status == "timed out"
    assert beside.status == "passed", beside.output
