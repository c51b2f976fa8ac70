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

from .client import Completion, LLMClient, StreamChunk
from .console import EXIT_BAD_INPUT, error_line
from .extensions import MimoRequest
from .plan import InferencePlan
from .provenance import provenance
from .record import RecordError, TaskRecord, TraceEntry, parse_record, write_record
from .served import Served
from .settings import Settings, load_settings

REORDER_FACTOR = 4


@dataclass
class StageContext:
    """What a stage function gets beside its record: settings, and the record's calls to the model.

    Every call made through it runs under the record's inference plan (`mimo_core.plan`): the precision, cache and
    speculation the components decided, sent as the typed `MimoRequest`, and on a remote server the deployment of
    the chosen precision as the oracle's model. A stage that means one call to run otherwise says so with
    `override`. What each call got back is summed in `served`, the evidence in the stage's trace entry."""

    settings: Settings
    _client_factory: Callable[[], LLMClient] = field(repr=False)
    record: TaskRecord | None = None
    served: Served = field(default_factory=Served)
    models: set[str] = field(default_factory=set)  # the models that answered this record's calls

    @property
    def client(self) -> LLMClient:
        """The process-wide client (started on first use, so stages that never call a model never start one)."""
        return self._client_factory()

    @property
    def plan(self) -> InferencePlan:
        """The record's plan as its sections hold it now (a stage may have just written its part)."""
        return InferencePlan.of(self.record) if self.record is not None else InferencePlan()

    def _planned(self, kwargs: dict[str, Any], override: MimoRequest | None) -> dict[str, Any]:
        plan = self.plan
        model = kwargs.get("model") or self.settings.oracle_model
        if plan.deployment and model == self.settings.oracle_model:
            model = plan.deployment  # a remote server serves this precision as another model
        return {**kwargs, "model": model, "mimo": plan.request(override)}

    async def chat(self, messages: list[dict[str, Any]], *, override: MimoRequest | None = None,
                   on_chunk: Callable[[StreamChunk], None] | None = None, **kwargs: Any) -> Completion:
        """A chat completion under the record's plan (streamed through `on_chunk` when given, see
        `LLMClient.chat`); its calls, tokens and what it was served count towards this record's trace entry."""
        return self._count(await self.client.chat(messages, on_chunk=on_chunk, **self._planned(kwargs, override)))

    async def complete(self, prompt: str | list[str], *, override: MimoRequest | None = None,
                       **kwargs: Any) -> Completion:
        """A text completion (e.g. echo with logprobs, to score text) under the plan, counted like `chat`."""
        return self._count(await self.client.complete(prompt, **self._planned(kwargs, override)))

    def count_cancelled(self, completion_tokens: int) -> None:
        """A call the stage cancelled before it returned: it counts, with the tokens that had arrived; the server's
        figures never came, so it adds nothing to what was reported."""
        self.served.calls += 1
        self.served.completion_tokens += completion_tokens

    def _count(self, result: Completion) -> Completion:
        usage = result.usage
        self.served.add(usage.calls, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, result.engine)
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
            calls=ctx.served.calls,
            prompt_tokens=ctx.served.prompt_tokens,
            completion_tokens=ctx.served.completion_tokens,
            provenance=provenance(stage, ctx.settings, ctx.models),
            served=ctx.served if ctx.served.calls else None,
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
            ctx = StageContext(settings, client_factory, record)
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
