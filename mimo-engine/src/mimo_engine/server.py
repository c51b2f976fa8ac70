"""The OpenAI-compatible HTTP server over the continuous-batching engine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Literal

import uvicorn
from fastapi import FastAPI, Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from mimo_core.contract import ContractError
from mimo_core.extensions import MimoReport, MimoRequest, PendingReport
from mimo_engine.metrics import prometheus_text
from mimo_engine.registry import MODELS
from mimo_engine.runtime import LoadedModel
from mimo_engine.sampling import (
    InvalidRequest,
    SamplingParams,
    Utf8Stream,
    chat_logprobs,
    completion_logprobs,
    text_offsets,
)
from mimo_engine.scheduler import (
    ChoiceResult,
    Delta,
    Done,
    Engine,
    Failed,
    ModelWorker,
    QueueFull,
    Request,
    UnknownModel,
    KV_CACHE_BYTES,
    STEP_TOKENS,
)

log = logging.getLogger(__name__)



# ---------------------------------------------------------------- request bodies


class StreamOptions(BaseModel):
    """OpenAI's `stream_options`: whether the last chunk carries usage."""

    include_usage: bool = False


class OpenAIBody(BaseModel):
    """Fields common to both endpoints; an explicit null means "the default", as OpenAI's API treats it."""

    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # not OpenAI's, but vLLM and llama.cpp accept it
    n: int = 1
    stop: str | list[str] = []
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions = StreamOptions()
    mimo: dict[str, Any] = {}  # the engine's extension, validated by `extension()`

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    def extension(self) -> MimoRequest:
        """The `mimo` extension of this body; an unknown or ill-typed field is a 400 naming it."""
        return MimoRequest.from_dict(self.mimo, "mimo")

    def sampling(self, max_tokens: int | None, logprobs: bool, top_logprobs: int) -> SamplingParams:
        """The validated sampling parameters of this body."""
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        return SamplingParams(
            max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
            seed=self.seed, stop=stop, n=self.n, logprobs=logprobs, top_logprobs=top_logprobs,
        )  # fmt: skip


class ChatMessage(BaseModel):
    """One chat message; content may be a string or a list of text parts."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text, its text parts joined."""
        if isinstance(self.content, list):
            if any(part.get("type") != "text" for part in self.content):
                raise InvalidRequest("only text content parts are supported", "messages")
            return "".join(str(part.get("text", "")) for part in self.content)
        return self.content or ""


class ChatBody(OpenAIBody):
    """The body of POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0


class CompletionBody(OpenAIBody):
    """The body of POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = 16  # OpenAI's default for this endpoint
    logprobs: int | None = None  # legacy: how many alternatives per token; 0 = the sampled token only
    echo: bool = False


# ---------------------------------------------------------------- errors


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    kind: str = "invalid_request_error",
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A response in OpenAI's error shape."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid_body(_: HttpRequest, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        return error_response(400, f"{'.'.join(where) or 'body'}: {first.get('msg')}", where[0] if where else None)

    @app.exception_handler(InvalidRequest)
    async def _invalid(_: HttpRequest, exc: InvalidRequest) -> JSONResponse:
        return error_response(400, str(exc), exc.param)

    @app.exception_handler(ContractError)
    async def _bad_extension(_: HttpRequest, exc: ContractError) -> JSONResponse:
        return error_response(400, str(exc), str(exc).split(":", 1)[0])

    @app.exception_handler(UnknownModel)
    async def _unknown(_: HttpRequest, exc: UnknownModel) -> JSONResponse:
        return error_response(404, str(exc), "model", "model_not_found")

    @app.exception_handler(QueueFull)
    async def _full(_: HttpRequest, exc: QueueFull) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)}
        return error_response(429, str(exc), None, "queue_full", "rate_limit_error", headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: HttpRequest, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), kind="invalid_request_error")

    @app.exception_handler(Exception)
    async def _crash(_: HttpRequest, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        return error_response(500, f"{type(exc).__name__}: {exc}", kind="server_error")


# ---------------------------------------------------------------- the `mimo` response field


def mimo_report(reports: list[MimoReport], mimo: MimoRequest) -> dict[str, Any]:
    """The `mimo` field of a response: the engine's report over the request's prompts, and the extensions it does not
    apply yet, said so with what was asked."""
    report = MimoReport.combine(reports)
    for name in ("precision", "speculation"):
        asked = getattr(mimo, name)
        setattr(report, name, PendingReport(applied=False, requested=None if asked is None else asked.to_dict()))
    return report.to_dict()


def usage(reports: list[MimoReport]) -> dict[str, Any]:
    """OpenAI's usage object over a request's prompts, with the prompt tokens served from the KV cache."""
    prompt = sum(r.prompt_tokens for r in reports)
    completion = sum(r.completion_tokens for r in reports)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(r.cache.cached_tokens for r in reports)}}


# ---------------------------------------------------------------- submitting and streaming


def submit_all(
    worker: ModelWorker, prompts: list[list[int]], params: SamplingParams, mimo: MimoRequest,
    prompt_logprobs: int | None = None,
) -> list[Request]:
    """Submit one request per prompt; if any is refused, cancel those already queued and re-raise."""
    requests: list[Request] = []
    try:
        for prompt in prompts:
            request = Request(prompt, params, prompt_logprobs, mimo)
            worker.submit(request)
            requests.append(request)
    except Exception:
        for request in requests:
            request.cancel()
        raise
    return requests


async def merged_events(requests: list[Request]) -> AsyncIterator[tuple[int, Delta | Done | Failed]]:
    """Events of several requests as they come, tagged with the request's position; cancels them if left early."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(position: int, request: Request) -> None:
        async for event in request.events():
            await queue.put((position, event))

    tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(requests)]
    remaining = len(requests)
    try:
        while remaining:
            position, event = await queue.get()
            remaining -= not isinstance(event, Delta)
            yield position, event
    finally:
        for request, task in zip(requests, tasks):
            request.cancel()
            task.cancel()


async def gather_results(requests: list[Request], http: HttpRequest) -> list[Done]:
    """Wait for every request; a failure of any becomes a 500 (nobody reads it if the client is gone)."""
    results = await asyncio.gather(*(r.result(http.is_disconnected) for r in requests))
    failed = [r.message for r in results if isinstance(r, Failed)]
    if failed:
        raise RuntimeError(failed[0])
    return results


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event line."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def _failure_event(message: str) -> str:
    return sse({"error": {"message": message, "type": "server_error", "param": None, "code": None}})


# ---------------------------------------------------------------- the app


@dataclass(frozen=True)
class ServerOptions:
    """How the server runs: batch and queue limits, idle exit, where models are cached."""

    max_batch_size: int = 8
    max_queue: int = 32
    step_tokens: int = STEP_TOKENS
    kv_cache_bytes: int = KV_CACHE_BYTES
    idle_timeout_s: float = 0.0  # 0: never exit when idle
    cache_dir: Path | None = None


def create_app(
    models: list[str],
    options: ServerOptions = ServerOptions(),
    *,
    load: Callable[[str], LoadedModel] | None = None,
    available: list[str] | None = None,
    on_idle: Callable[[], None] | None = None,
) -> FastAPI:
    """The FastAPI app: preloads `models`, serves any other known model lazily, calls `on_idle` after the idle timeout.

    `load` and `available` stand in for the runtime and the registry (tests); `on_idle` stops the app's server.
    """
    engine = Engine(
        MODELS if available is None else available,
        load or (lambda name: LoadedModel.load(name, options.cache_dir)),
        max_batch_size=options.max_batch_size,
        max_queue=options.max_queue,
        step_tokens=options.step_tokens,
        kv_cache_bytes=options.kv_cache_bytes,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for name in models:
            await asyncio.to_thread(engine.worker, name)
        timeout_s = options.idle_timeout_s
        watcher = asyncio.create_task(_watch_idle(engine, timeout_s, on_idle)) if timeout_s else None
        try:
            yield
        finally:
            if watcher:
                watcher.cancel()
            await asyncio.to_thread(engine.close)

    app = FastAPI(title="mimo-engine", lifespan=lifespan)
    app.state.engine = engine
    _install_error_handlers(app)

    @app.middleware("http")
    async def _touch(request: HttpRequest, call_next: Callable) -> Any:
        engine.touch()  # any request, /health included, keeps an idle-timeout server alive
        return await call_next(request)

    _add_info_routes(app, engine)
    _add_chat_route(app, engine)
    _add_completion_route(app, engine)
    return app


async def _watch_idle(engine: Engine, timeout_s: float, on_idle: Callable[[], None] | None) -> None:
    """Call `on_idle` once nothing has arrived or run for `timeout_s` seconds."""
    while True:
        await asyncio.sleep(min(1.0, timeout_s / 4))
        if not engine.busy() and time.monotonic() - engine.last_active() >= timeout_s:
            log.warning("idle for %.0f s: exiting", timeout_s)
            if on_idle:
                on_idle()
            return


async def resolve(engine: Engine, name: str) -> ModelWorker:
    """The worker of a model; a model not yet loaded loads in a thread, so the server keeps serving the others."""
    return engine.workers().get(name) or await asyncio.to_thread(engine.worker, name)


def _add_info_routes(app: FastAPI, engine: Engine) -> None:
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models_loaded": engine.loaded(), "pid": os.getpid()}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        loaded = set(engine.loaded())
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "mimo-engine", "loaded": name in loaded}
                for name in sorted(engine.available)
            ],
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(prometheus_text(engine), media_type="text/plain; version=0.0.4")


# ---------------------------------------------------------------- /v1/chat/completions


def _add_chat_route(app: FastAPI, engine: Engine) -> None:
    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody, http: HttpRequest) -> Any:
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        if max_tokens is not None and max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1", "max_tokens")
        params = body.sampling(max_tokens, body.logprobs, body.top_logprobs)
        worker = await resolve(engine, body.model)
        tokenizer = worker.model.tokenizer
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            rendered = tokenizer.render_chat(messages, add_generation_prompt=True)
        except Exception as exc:  # the model's own template rejects the conversation (e.g. role order)
            raise InvalidRequest(f"the chat template rejected the messages: {exc}", "messages") from None
        requests = submit_all(worker, [tokenizer.encode(rendered, allow_special=True)], params, body.extension())
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": body.model}
        if body.stream:
            return StreamingResponse(_chat_stream(head, requests, tokenizer, body), media_type="text/event-stream")
        (done,) = await gather_results(requests, http)
        return {
            **head,
            "object": "chat.completion",
            "choices": [
                {
                    "index": c.index,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": chat_logprobs(c.logprobs, tokenizer) if body.logprobs else None,
                    "finish_reason": c.finish_reason,
                }
                for c in done.choices
            ],
            "usage": usage([done.report]),
            "mimo": mimo_report([done.report], body.extension()),
        }


async def _chat_stream(head: dict, requests: list[Request], tokenizer: Any, body: ChatBody) -> AsyncIterator[str]:
    """SSE chunks: the role per choice, then text deltas, then a final chunk with usage and `mimo`, then [DONE]."""
    head = {**head, "object": "chat.completion.chunk"}

    def chunk(index: int, delta: dict, logprobs: dict | None = None, finish_reason: str | None = None) -> str:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return sse({**head, "choices": [choice]})

    for index in range(body.n):
        yield chunk(index, {"role": "assistant", "content": ""})
    async for _, event in merged_events(requests):
        if isinstance(event, Failed):
            yield _failure_event(event.message)
        elif isinstance(event, Done):
            final = {**head, "choices": [], "mimo": mimo_report([event.report], body.extension())}
            if body.stream_options.include_usage:
                final["usage"] = usage([event.report])
            yield sse(final)
        elif event.text or event.logprob or event.finish_reason:
            logprobs = chat_logprobs([event.logprob], tokenizer) if event.logprob else None
            yield chunk(event.index, {"content": event.text} if event.text else {}, logprobs, event.finish_reason)
    yield sse("[DONE]")


# ---------------------------------------------------------------- /v1/completions


@dataclass(frozen=True)
class Prompt:
    """One prompt of a completions request, as text (what echo returns) and as token ids (what the model reads)."""

    text: str
    tokens: list[int]


def _completion_prompts(body: CompletionBody, tokenizer: Any) -> list[Prompt]:
    """The prompts of a body: a string, strings, token ids or lists of token ids."""
    prompts = body.prompt
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    if not prompts:
        raise InvalidRequest("prompt must not be empty", "prompt")
    return [
        Prompt(p, tokenizer.encode(p, allow_special=True)) if isinstance(p, str) else Prompt(tokenizer.decode(p), p)
        for p in prompts
    ]


def _add_completion_route(app: FastAPI, engine: Engine) -> None:
    @app.post("/v1/completions")
    async def completions(body: CompletionBody, http: HttpRequest) -> Any:
        if body.max_tokens < (0 if body.echo else 1):
            raise InvalidRequest("max_tokens must be at least 1 (0 only with echo)", "max_tokens")
        params = body.sampling(body.max_tokens, body.logprobs is not None, body.logprobs or 0)
        worker = await resolve(engine, body.model)
        tokenizer = worker.model.tokenizer
        prompts = _completion_prompts(body, tokenizer)
        scoring = body.logprobs if body.echo and body.logprobs is not None else None
        requests = submit_all(worker, [p.tokens for p in prompts], params, body.extension(), scoring)
        head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": body.model}
        if body.stream:
            stream = _completion_stream(head, requests, prompts, tokenizer, body)
            return StreamingResponse(stream, media_type="text/event-stream")
        results = await gather_results(requests, http)
        choices = [
            _completion_choice(position * body.n + c.index, prompt, done, c, tokenizer, body)
            for position, (prompt, done) in enumerate(zip(prompts, results))
            for c in done.choices
        ]
        reports = [done.report for done in results]
        return {
            **head,
            "object": "text_completion",
            "choices": choices,
            "usage": usage(reports),
            "mimo": mimo_report(reports, body.extension()),
        }


def _completion_choice(
    index: int, prompt: Prompt, done: Done, choice: ChoiceResult, tokenizer: Any, body: CompletionBody
) -> dict[str, Any]:
    """One legacy choice; with echo the text and the logprobs start with the prompt's."""
    prefix = prompt.text if body.echo else ""
    logprobs = None
    if body.logprobs is not None:
        tokens, entries = choice.tokens, choice.logprobs
        offsets = text_offsets(tokenizer, tokens, len(prefix))
        if body.echo:
            tokens, entries = prompt.tokens + tokens, done.prompt_scores + entries
            offsets = text_offsets(tokenizer, prompt.tokens) + offsets
        logprobs = completion_logprobs(tokens, entries, offsets, tokenizer)
    return {"index": index, "text": prefix + choice.text, "logprobs": logprobs, "finish_reason": choice.finish_reason}


async def _completion_stream(
    head: dict, requests: list[Request], prompts: list[Prompt], tokenizer: Any, body: CompletionBody
) -> AsyncIterator[str]:
    """SSE chunks of text (with per-token legacy logprobs), a final chunk with usage and `mimo`, then [DONE]."""
    head = {**head, "object": "text_completion"}
    streams: dict[int, Utf8Stream] = {}
    offsets: dict[int, int] = {}
    reports: list[MimoReport] = []
    if body.echo:  # the prompt comes first, as its own chunk per choice
        for position, prompt in enumerate(prompts):
            for j in range(body.n):
                choice = {"index": position * body.n + j, "text": prompt.text, "logprobs": None, "finish_reason": None}
                yield sse({**head, "choices": [choice]})
    async for position, event in merged_events(requests):
        if isinstance(event, Failed):
            yield _failure_event(event.message)
        elif isinstance(event, Done):
            reports.append(event.report)
        else:
            index = position * body.n + event.index
            logprobs = None
            if event.logprob:
                stream = streams.setdefault(index, Utf8Stream(tokenizer))
                offset = offsets.setdefault(index, len(prompts[position].text) if body.echo else 0)
                offsets[index] += len(stream.push(event.logprob.token))
                logprobs = completion_logprobs([event.logprob.token], [event.logprob], [offset], tokenizer)
            choice = {"index": index, "text": event.text, "logprobs": logprobs, "finish_reason": event.finish_reason}
            yield sse({**head, "choices": [choice]})
    if len(stats) == len(requests):
        final = {**head, "choices": [], "mimo": mimo_report(reports, body.extension())}
        if body.stream_options.include_usage:
            final["usage"] = usage(reports)
        yield sse(final)
    yield sse("[DONE]")


# ---------------------------------------------------------------- running it


def serve(host: str, port: int, models: list[str], options: ServerOptions = ServerOptions()) -> None:
    """Run the server until interrupted or, with an idle timeout, until idle that long."""
    server: uvicorn.Server | None = None

    def stop() -> None:
        server.should_exit = True

    app = create_app(models, options, on_idle=stop)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    server.run()
