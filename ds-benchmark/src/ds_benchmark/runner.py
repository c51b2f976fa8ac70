"""The trusted runner inside the sandbox: `python -I -S runner.py supervise JOB_FD REPORT_FD`.

It is a standalone script (only the standard library, no package imports) because it runs under bubblewrap with
nothing of the host but the interpreter, as the sandbox's pid 1 (which no process inside can kill). It reads its job
from JOB_FD (a pipe: the tests never lie in a file), makes itself non-dumpable (so that a candidate of the same uid
can neither ptrace it nor read its /proc memory or fds), applies the rlimits, and starts the model's code as a child process of its own, which holds neither the job nor
REPORT_FD. Then, by the job's mode:

- `program`: runs the source as a program and reports its exit status, as waitpid gives it;
- `check`: runs the candidate as a server that only answers calls (`runner.py serve`), runs the problem's prompt and
  tests here, and calls `check(proxy)`. `proxy(*args)` sends the arguments to the candidate and decodes its answer
  into plain built-in values (None, bool, int, float, str, and lists, tuples, sets, frozensets and dicts of them);
  the expected values never enter the candidate's process. The run passes only when `check()` returned normally,
  the candidate answered every call with plain data, and this process says so on REPORT_FD with the job's nonce.
"""

import json
import os
import resource
import signal
import sys
import time

MAX_MESSAGE = 16 << 20  # bytes of one message between the checker and the candidate
MAX_DEPTH = 100  # nesting of one value
MAX_REASON = 500  # characters of a reason kept
PR_SET_DUMPABLE = 4
CONTAINERS = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}


class Violation(BaseException):
    """The candidate broke the protocol (ended, answered with something not plain): a BaseException, so that a test's
    `except Exception` cannot swallow it; the supervisor also remembers it."""


class CandidateRaised(Exception):
    """The candidate's function raised; the message is its exception's type and text."""


def encode(value, depth=0):
    """`value` as JSON-safe data with its container types tagged; TypeError if it is not a plain built-in value."""
    if depth > MAX_DEPTH:
        raise TypeError("a value nested too deeply")
    kind = type(value)  # exact types: a subclass of int may define __eq__ to be always true
    if value is None or kind in (bool, int, float, str):
        return value
    if kind in (list, tuple, set, frozenset):
        return {kind.__name__: [encode(item, depth + 1) for item in value]}
    if kind is dict:
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    raise TypeError(f"a {kind.__module__}.{kind.__qualname__}, not a plain built-in value")


def decode(data, depth=0):
    """The plain value `encode` wrote; ValueError or TypeError (unhashable) on anything else."""
    if depth > MAX_DEPTH:
        raise ValueError("a value nested too deeply")
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is dict and len(data) == 1:
        ((tag, items),) = data.items()
        if type(items) is list and tag in CONTAINERS:
            return CONTAINERS[tag](decode(item, depth + 1) for item in items)
        if type(items) is list and tag == "dict" and all(type(p) is list and len(p) == 2 for p in items):
            return {decode(k, depth + 1): decode(v, depth + 1) for k, v in items}
    raise ValueError(f"not plain data: {str(data)[:80]}")


def send(stream, message):
    """Write one message as a line of JSON (which never holds a raw newline)."""
    stream.write(json.dumps(message).encode() + b"\n")
    stream.flush()


def receive(stream):
    """The next message, or None at the end of the stream; ValueError if it is too long or not JSON."""
    line = stream.readline(MAX_MESSAGE + 1)
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise ValueError("a message that is too long or cut off")
    return json.loads(line)


def serve(call_fd, reply_fd, path, entry_point):
    """The candidate's side: load its code, say ready, then answer each call with its function's result."""
    calls, replies = os.fdopen(call_fd, "rb"), os.fdopen(reply_fd, "wb")
    namespace = {"__name__": "candidate"}  # not __main__: a model's example code under a main guard stays quiet
    try:
        with open(path, encoding="utf-8") as file:
            exec(compile(file.read(), path, "exec"), namespace)
        function = namespace[entry_point]
    except Exception as exc:  # noqa: BLE001 - any failure to load is the reason the candidate is wrong
        send(replies, {"load_error": _describe(exc)})
        return
    send(replies, {"ready": True})
    while (message := receive(calls)) is not None:
        args, kwargs = decode(message["args"]), decode(message["kwargs"])
        try:
            result = function(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - reported to the checker, which decides
            send(replies, {"raised": _describe(exc)})
            continue
        try:
            send(replies, {"value": encode(result)})
        except (TypeError, ValueError, RecursionError) as exc:
            send(replies, {"unplain": str(exc)})


def _describe(exc):
    return f"{type(exc).__name__}: {exc}"[:MAX_REASON]


def _limit(rlimits):
    for name, value in rlimits.items():
        resource.setrlimit(getattr(resource, name), (value, value))


def _spawn(argv, uid, keep):
    """Fork and exec `argv` as the candidate: only stdio and `keep` survive the exec, as `uid` when given."""
    pid = os.fork()
    if pid:
        return pid
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        for fd in keep:
            os.set_inheritable(fd, True)
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        os.execv(sys.executable, [sys.executable, "-I", "-S", *argv])
    finally:
        os._exit(127)


def _ended(pid):
    """How the candidate process ended (it is killed if it has only closed its side)."""
    for _ in range(50):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            return f"exit code {code}" if code >= 0 else f"signal {-code}"
        time.sleep(0.01)
    os.kill(pid, 9)
    return "it closed its end of the pipe"


def _where(exc, tests):
    """`line N: source` of the innermost frame in the tests, for a failure's reason."""
    tb, line = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<tests>":
            line = tb.tb_lineno
        tb = tb.tb_next
    lines = tests.splitlines()
    return f" at tests line {line}: {lines[line - 1].strip()}" if line and line <= len(lines) else ""


def check(job, spawn):
    """Run the job's tests against the candidate through the proxy: (passed, reason, calls)."""
    path = "/sandbox/candidate.py"
    with open(path, "w", encoding="utf-8") as file:
        file.write(job["candidate"])
    call_r, call_w = os.pipe()
    reply_r, reply_w = os.pipe()
    pid = spawn([os.path.abspath(__file__), "serve", str(call_r), str(reply_w), path, job["entry_point"]],
                (call_r, reply_w))
    os.close(call_r)
    os.close(reply_w)
    calls, replies = os.fdopen(call_w, "wb"), os.fdopen(reply_r, "rb")
    state = {"calls": 0, "violation": None}

    def answer():
        try:
            message = receive(replies)
        except (ValueError, RecursionError) as exc:
            raise Violation(f"the candidate sent a malformed message ({exc})") from None
        if message is None:
            raise Violation(f"the candidate process ended ({_ended(pid)}) before answering")
        if type(message) is not dict or len(message) != 1:
            raise Violation("the candidate sent a malformed message")
        return next(iter(message.items()))

    def proxy(*args, **kwargs):
        if state["violation"]:
            raise Violation(state["violation"])
        state["calls"] += 1
        try:
            send(calls, {"args": encode(list(args)), "kwargs": encode(kwargs)})
            kind, value = answer()
            if kind == "value":
                try:
                    return decode(value)
                except (ValueError, TypeError, RecursionError) as exc:
                    raise Violation(f"the candidate answered with something not plain ({exc})") from None
            if kind == "raised" and type(value) is str:
                raise CandidateRaised(value[:MAX_REASON])
            if kind == "unplain" and type(value) is str:
                raise Violation(f"the candidate returned {value[:MAX_REASON]}")
            raise Violation("the candidate sent a malformed message")
        except BrokenPipeError:
            raise Violation(f"the candidate process ended ({_ended(pid)}) before answering") from None
        except Violation as exc:
            state["violation"] = str(exc)
            raise

    try:
        kind, value = answer()
    except Violation as exc:
        return False, str(exc), 0
    if kind == "load_error":
        return False, f"the code did not load: {str(value)[:MAX_REASON]}", 0
    if kind != "ready":
        return False, "the candidate sent a malformed message", 0
    namespace = {"__name__": "checker"}
    try:
        exec(compile(job["prompt"], "<prompt>", "exec"), namespace)
        namespace[job["entry_point"]] = proxy  # a test or helper naming the function gets the candidate too
        exec(compile(job["tests"], "<tests>", "exec"), namespace)
        namespace["check"](proxy)
    except Violation:
        pass  # remembered in state, whatever the tests did with it
    except CandidateRaised as exc:
        return False, f"the candidate raised {exc}{_where(exc, job['tests'])}", state["calls"]
    except AssertionError as exc:
        return False, f"a test failed{_where(exc, job['tests'])}", state["calls"]
    except Exception as exc:  # noqa: BLE001 - a test that cannot use the candidate's answer
        return False, f"the tests raised {_describe(exc)}{_where(exc, job['tests'])}", state["calls"]
    if state["violation"]:
        return False, state["violation"], state["calls"]
    if not state["calls"]:
        return False, "the tests never called the candidate", 0
    return True, "passed", state["calls"]


def supervise(job_fd, report_fd):
    """Read the job, run it, and write the report; see the module docstring."""
    import ctypes  # noqa: PLC0415 - only the supervisor needs it

    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        sys.exit("runner: cannot make itself non-dumpable")
    # As the namespace's init it gets only the signals it handles: Python's SIGINT handler is the one way in.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.set_inheritable(report_fd, False)
    with os.fdopen(job_fd, "rb") as stream:
        job = json.loads(stream.read())
    sys.set_int_max_str_digits(0)
    _limit(job["rlimits"])
    uid = job.get("uid")

    def spawn(argv, keep):
        return _spawn(argv, uid, keep)

    if job["mode"] == "check":
        passed, reason, calls = check(job, spawn)
        report = {"passed": passed, "detail": reason[:MAX_REASON * 2], "calls": calls}
    else:
        with open("/sandbox/program.py", "w", encoding="utf-8") as file:
            file.write(job["source"])
        pid = spawn(["program.py"], ())
        report = {"exit_code": os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}
    with os.fdopen(report_fd, "wb") as stream:
        stream.write(json.dumps({"nonce": job["nonce"], **report}).encode())
    os._exit(0)  # the candidate may still run: the sandbox's pid namespace ends it with this process


if __name__ == "__main__":
    sys.set_int_max_str_digits(0)
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        supervise(int(sys.argv[2]), int(sys.argv[3]))
