"""`run_stage`: the loop every tool's CLI runs — read records, process them concurrently, trace, write in order."""

from __future__ import annotations

import asyncio
import inspect
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import IO, Any, Awaitable, Callable, Iterable

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .client import LLMClient, Usage
from .console import EXIT_BAD_INPUT
from .record import RecordError, TaskRecord, TraceEntry, parse_record, write_record
from .settings import Settings, load_settings


@dataclass
class StageContext:
    """What a stage function gets beside its record: settings, and a client that counts this record's usage."""

    settings: Settings
    _client_factory: Callable[[], LLMClient] = field(repr=False)
    usage: Usage = field(default_factory=Usage)

    @property
    def client(self) -> LLMClient:
        """The process-wide client (started on first use, so stages that never call a model never start one)."""
        return self._client_factory()

    async def chat(self, messages: list[dict[str, Any]], **kwargs: Any):
        """A chat completion whose calls and tokens count towards this record's trace entry."""
        result = await self.client.chat(messages, **kwargs)
        self.usage.add(result.usage)
        return result

    async def complete(self, prompt: str, **kwargs: Any):
        """A text completion (e.g. echo with logprobs, to score text), counted like `chat`."""
        result = await self.client.complete(prompt, **kwargs)
        self.usage.add(result.usage)
        return result


StageFn = Callable[[TaskRecord, StageContext], Awaitable[None] | None]


async def _call(fn: StageFn, record: TaskRecord, ctx: StageContext) -> None:
    if inspect.iscoroutinefunction(fn):
        await fn(record, ctx)
    else:  # blocking work (a sandboxed subprocess, numpy) must not stall the other records on the loop
        await asyncio.to_thread(fn, record, ctx)


async def process_record(
    stage: str,
    record: TaskRecord,
    process: StageFn,
    ctx: StageContext,
    *,
    component: str | None = None,
    baseline: StageFn | None = None,
) -> TaskRecord:
    """Run one stage over one record: the baseline if its component is disabled, a trace entry either way.

    A failure goes into `record.error` instead of stopping the stream."""
    is_baseline = component is not None and component in record.disabled
    status = "baseline" if is_baseline else "ok"
    started = time.time()
    try:
        fn = baseline if is_baseline else process
        if fn is not None:
            await _call(fn, record, ctx)
    except Exception as exc:  # noqa: BLE001 - any failure of one record is that record's error, not the stream's
        status = "error"
        message = f"{stage}: {type(exc).__name__}: {exc}"
        record.error = message if record.error is None else f"{record.error}; {message}"
    ended = time.time()
    record.trace.append(
        TraceEntry(
            stage=stage,
            status=status,
            started_at=started,
            ended_at=ended,
            wall_s=round(ended - started, 6),
            calls=ctx.usage.calls,
            prompt_tokens=ctx.usage.prompt_tokens,
            completion_tokens=ctx.usage.completion_tokens,
        )
    )
    return record


async def run_stage_async(
    stage: str,
    process: StageFn,
    *,
    component: str | None = None,
    baseline: StageFn | None = None,
    source: IO[str] | Iterable[str] | None = None,
    sink: IO[str] | None = None,
    concurrency: int | None = None,
    settings: Settings | None = None,
) -> int:
    """The async body of `run_stage`; returns the exit code."""
    settings = settings or load_settings()
    source = sys.stdin if source is None else source
    sink = sys.stdout if sink is None else sink
    limit = concurrency or settings.concurrency
    client: list[LLMClient] = []

    def client_factory() -> LLMClient:
        if not client:
            client.append(LLMClient(settings))
        return client[0]

    in_flight: deque[asyncio.Task[TaskRecord]] = deque()
    progress = _progress(stage)
    counter = progress.add_task(stage, total=None, errors=0)
    errors = 0

    async def flush(keep: int) -> None:
        # Output keeps input order: a window of `limit` records is processed while the oldest is awaited.
        nonlocal errors
        while len(in_flight) > keep:
            record = await in_flight.popleft()
            write_record(record, sink)
            errors += record.trace[-1].status == "error"
            progress.update(counter, advance=1, errors=errors)

    lines = iter(source)
    line_no = 0
    progress.start()
    try:
        while (line := await asyncio.to_thread(next, lines, None)) is not None:
            line_no += 1
            if not line.strip():
                continue
            try:
                record = parse_record(line, line_no)
            except RecordError as exc:
                await flush(0)
                print(str(exc), file=sys.stderr)
                return EXIT_BAD_INPUT
            ctx = StageContext(settings, client_factory)
            task = process_record(stage, record, process, ctx, component=component, baseline=baseline)
            in_flight.append(asyncio.ensure_future(task))
            await flush(limit - 1)
        await flush(0)
    finally:
        progress.stop()
        if client:
            await client[0].close()
    return 0


def _progress(stage: str) -> Progress:
    """A records-done counter on stderr (stdout carries the records), drawn only on a terminal."""
    console = Console(stderr=True)
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}: {task.completed} records, {task.fields[errors]} errors"),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )


def run_stage(stage: str, process: StageFn, **kwargs: Any) -> int:
    """Stream records from stdin (or `source`) through `process` to stdout (or `sink`); returns the exit code.

    Keyword arguments are those of `run_stage_async`: component, baseline, source, sink, concurrency, settings."""
    return asyncio.run(run_stage_async(stage, process, **kwargs))
