"""The pipeline as a real shell pipe: each stage is its own process, joined to the next by an OS pipe.

`route | plan | reason | run | score`: records stream through, so the stages overlap, and every stage is the same
command a user would type. The stages find the shared embedded engine themselves (or the remote endpoint): the
settings reach them through the environment.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from mimo_core.console import EXIT_CANNOT_RUN
from mimo_core.record import RecordError, TaskRecord, read_records, write_record
from mimo_core.tools import tool_command

# (component, command): the order of the pipe; the last stage scores and is the benchmark's, not a component.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("precision-router", ("precision-router", "route")),
    ("tiered-kv-cache", ("tiered-kv-cache", "plan")),
    ("spec-reasoner", ("spec-reasoner", "reason")),
    ("multi-agent-orchestrator", ("multi-agent-orchestrator", "run")),
    ("ds-benchmark", ("ds-benchmark", "score")),
)


class PipeError(RuntimeError):
    """A stage of the pipe failed; the message names it and gives the last line it wrote on stderr."""


def shell_command() -> str:
    """The pipe as one would type it in a shell."""
    return " | ".join(" ".join(command) for _, command in STAGES)


def _feed(records: Iterable[TaskRecord], sink: IO[str]) -> None:
    try:
        for record in records:
            write_record(record, sink)
    except (BrokenPipeError, ValueError):
        pass  # the first stage exited; its exit code says why
    finally:
        try:
            sink.close()
        except BrokenPipeError:
            pass


def _reap_when_done(process: subprocess.Popen) -> None:
    """Wait on a stage process from a thread of its own, so that it is reaped the moment it exits: a stage that
    ends early (its input ended, or it crashed) must not stay a zombie until every other stage has ended too."""
    # Popen.wait is safe across threads (it holds the Popen's lock), and its exit code stays readable afterwards.
    threading.Thread(target=process.wait, name=f"reap-{process.pid}", daemon=True).start()


def run_pipe(records: Iterable[TaskRecord], env: dict[str, str], stderr: IO[str]) -> Iterator[TaskRecord]:
    """Stream `records` through the five stages and yield each record as the last stage writes it.

    Stage diagnostics go to `stderr` (a file). Raises PipeError when a stage fails or writes something that is not
    a record; stopping the iteration early (or an interrupt) stops every stage."""
    processes: list[subprocess.Popen] = []
    upstream = subprocess.PIPE
    try:
        for _, command in STAGES:
            process = subprocess.Popen([tool_command(command[0]), *command[1:]], stdin=upstream,
                                       stdout=subprocess.PIPE, stderr=stderr, env=env, text=True, encoding="utf-8")
            if processes:
                processes[-1].stdout.close()  # the next stage holds the read end now: EOF travels down the pipe
            processes.append(process)
            _reap_when_done(process)
            upstream = process.stdout
        feeder = threading.Thread(target=_feed, args=(records, processes[0].stdin), daemon=True)
        feeder.start()
        try:
            yield from read_records(processes[-1].stdout)
        except RecordError as exc:
            raise PipeError(f"the pipe wrote something that is not a record: {exc}") from None
        feeder.join()
        for (name, _), process in zip(STAGES, processes):
            code = process.wait()
            # `ds-benchmark score` exits 3 when coding records could not be run; the others were scored
            if code and not (name == "ds-benchmark" and code == EXIT_CANNOT_RUN):
                raise PipeError(f"{name} exited with code {code}: {_last_line(stderr)}")
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
            if process.stdout:
                process.stdout.close()


def _last_line(stream: IO[str]) -> str:
    """The last non-empty line written to a stage's stderr file, for the one-line error."""
    try:
        stream.flush()
        lines = Path(stream.name).read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except (OSError, AttributeError, TypeError):
        return "see its log"
    return lines[-1] if lines else "it said nothing on stderr"
