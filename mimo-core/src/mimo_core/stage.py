"""`run_stage`: the loop every tool's CLI runs — read records, process them concurrently, trace, write in order."""

from __future__ import annotations

import asyncio
import inspect
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any, Awaitable, Callable, Iterable

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .client import Completion, LLMClient, Usage
from .console import EXIT_BAD_INPUT, error_line
from .provenance import provenance
from .record import RecordError, TaskRecord, TraceEntry, parse_record, write_record
from .settings import Settings, load_settings

REORDER_FACTOR = 4


@dataclass
class StageContext:
    """What a stage function gets beside its record: settings, and a client that counts this record's usage."""

    settings: Settings
    _client_factory: Callable[[], LLMClient] = field(repr=False)
    usage: Usage = field(default_factory=Usage)
    models: set[str] = field(default_factory=set)  # the models that answered this record's calls

    @property
    def client(self) -> LLMClient:
        """The process-wide client (started on first use, so stages that never call a model never start one)."""
        return self._client_factory()

    async def chat(self, messages: list[dict[str, Any]], **kwargs: Any):
        """A chat completion whose calls and tokens count towards this record's trace entry."""
        return self._count(await self.client.chat(messages, **kwargs))

    async def complete(self, prompt: str | list[str], **kwargs: Any):
        """A text completion (e.g. echo with logprobs, to score text), counted like `chat`."""
        return self._count(await self.client.complete(prompt, **kwargs))

    def _count(self, result: Completion) -> Completion:
        self.usage.add(result.usage)
        self.models.add(result.model)
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
            provenance=provenance(stage, ctx.settings, ctx.models),
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

    # `limit` records are processed at once whatever order they finish in; output keeps input order through a
    # reorder buffer. The buffer is bounded (REORDER_FACTOR x limit records read but not yet written) so that one
    # record that never ends cannot make the stage read its whole input into memory.
    slots = asyncio.Semaphore(limit)
    room = asyncio.Semaphore(limit * REORDER_FACTOR)
    in_order: asyncio.Queue[asyncio.Task[TaskRecord] | None] = asyncio.Queue()
    progress = _progress(stage)
    counter = progress.add_task(stage, total=None, errors=0)

    async def process_in_slot(record: TaskRecord) -> TaskRecord:
        try:
            ctx = StageContext(settings, client_factory)
            return await process_record(stage, record, process, ctx, component=component, baseline=baseline)
        finally:
            slots.release()

    async def write_in_order() -> None:
        errors = 0
        try:
            while (task := await in_order.get()) is not None:
                record = await task
                write_record(record, sink)
                room.release()
                errors += record.trace[-1].status == "error"
                progress.update(counter, advance=1, errors=errors)
        except BaseException:
            room.release()  # the sink is gone (a closed pipe): wake the reader so that it stops too
            raise

    lines = iter(source)
    line_no = 0
    bad_input: str | None = None
    progress.start()
    writer = asyncio.create_task(write_in_order())
    try:
        while (line := await asyncio.to_thread(next, lines, None)) is not None:
            line_no += 1
            if not line.strip():
                continue
            try:
                record = parse_record(line, line_no)
            except RecordError as exc:
                bad_input = str(exc)
                break
            await room.acquire()
            if writer.done():
                break
            await slots.acquire()
            in_order.put_nowait(asyncio.create_task(process_in_slot(record)))
        in_order.put_nowait(None)
        await writer  # every record read before a bad line is written before the tool says so and stops
    finally:
        writer.cancel()
        progress.stop()
        if client:
            await client[0].close()
    if bad_input is not None:
        print(error_line(stage, bad_input), file=sys.stderr)
        return EXIT_BAD_INPUT
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
