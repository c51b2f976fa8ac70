"""The OpenAI-compatible HTTP server over the continuous-batching engine.

What a hostile client meets: bodies over `max_body_bytes` are refused (413) before they are read; a parameter the
engine does not act on is refused (400 naming it), never silently ignored; tokenizing and model loads run off the
event loop, so `/health` answers while they work; only the models the operator named are served; a client that hangs
up has its sequences stopped and freed; SIGTERM stops accepting at once and cuts what is still running after a
bounded drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Literal

import uvicorn
from fastapi import FastAPI, Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from mimo_core.contract import ContractError
from mimo_core.daemon import EngineHealth
from mimo_core.extensions import MimoReport, MimoRequest
from mimo_core.settings import is_model_path
from mimo_engine.config import EngineConfig
from mimo_engine.engine import Engine, UnknownModel
from mimo_engine.metrics import prometheus_text
from mimo_engine.output import ChoiceResult, Delta, Done, Failed
from mimo_engine.registry import MODELS
from mimo_engine.runtime import LoadedModel, resolve_policies
from mimo_engine.sampling import (
    InvalidRequest,
    SamplingParams,
    Utf8Stream,
    chat_logprobs,
    completion_logprobs,
    text_offsets,
)
from mimo_engine.scheduler import QueueFull, Unservable
from mimo_engine.stream import Request
from mimo_engine.worker import ModelWorker, Unavailable

log = logging.getLogger(__name__)
access_log = logging.getLogger("mimo_engine.access")

MAX_BODY_BYTES = 4 << 20  # a full 32k-token context is about 150 KB of text: 4 MiB leaves room for lists of prompts
DRAIN_S = 10.0  # after SIGTERM, how long requests in flight may run before they are cut
CUT_GRACE_S = 5.0  # after the cut, how long responses get to send their error before connections are dropped
RETRY_AFTER_S = 1  # what a client refused for a full queue is told: sequences finish every few tokens, so retry soon
# The API's parameter path of each part of a request the engine may find unservable (`Unservable.field`)
PARAM_PATHS = {"prompt": "prompt", "n": "n", "precision": "mimo.precision.policy",
               "speculation": "mimo.speculation.method"}


# ---------------------------------------------------------------- request bodies

# The OpenAI parameters the engine does not act on, and why. A request that sets one is refused with 400 naming it,
# never answered as if it had not asked: a client that wants JSON output or tool calls must not get free text and
# no error. A value that asks for nothing beyond what the engine does anyway is accepted (`_NEUTRAL`), and so is an
# explicit null (the default). A field neither supported (the body classes' fields) nor listed here is unknown: 400.
UNSUPPORTED = {
    "response_format": "it samples free text and cannot constrain the output to JSON or a schema",
    "tools": "it does not do tool calls",
    "tool_choice": "it does not do tool calls",
    "parallel_tool_calls": "it does not do tool calls",
    "functions": "it does not do function calls",
    "function_call": "it does not do function calls",
    "logit_bias": "it does not bias token logits",
    "presence_penalty": "it applies no repetition penalty",
    "frequency_penalty": "it applies no repetition penalty",
    "best_of": "it does not rank candidates; ask for n choices instead",
    "suffix": "it does not insert text before a suffix",
    "user": "it keeps nothing per end user",
    "safety_identifier": "it keeps nothing per end user",
    "service_tier": "it has no service tiers",
    "store": "it stores no completions",
    "metadata": "it stores no completions to tag",
    "modalities": "it writes text only",
    "audio": "it writes text only",
    "prediction": "it does not take predicted outputs",
    "reasoning_effort": "its models take no reasoning effort",
    "verbosity": "its models take no verbosity",
    "web_search_options": "it does not search the web",
    "prompt_cache_key": "its prefix cache needs no key: a prompt that starts like an earlier one reuses its blocks",
    "prompt_cache_retention": "its prefix cache keeps blocks until they are evicted",
}
_NEUTRAL: dict[str, Callable[[Any, "OpenAIBody"], bool]] = {
    "response_format": lambda v, _: v == {"type": "text"},
    "tools": lambda v, _: v == [],
    "functions": lambda v, _: v == [],
    "tool_choice": lambda v, _: v == "none",
    "function_call": lambda v, _: v == "none",
    "logit_bias": lambda v, _: v == {},
    "presence_penalty": lambda v, _: v == 0,
    "frequency_penalty": lambda v, _: v == 0,
    "best_of": lambda v, body: v == body.n,  # as many candidates as choices: every candidate is returned
    "suffix": lambda v, _: v == "",
    "store": lambda v, _: v is False,
    "metadata": lambda v, _: v == {},
    "modalities": lambda v, _: v == ["text"],
}
# What a chat message may carry besides role and content: fields whose content the template would drop are refused
_MESSAGE_FIELDS = {"tool_call_id", "refusal"}  # tool_call_id: the template renders the tool message's text alone


class UnsupportedParameter(InvalidRequest):
    """A request field the engine does not act on, or does not know; `code` as OpenAI's errors have it."""

    def __init__(self, message: str, param: str, code: str = "unsupported_parameter") -> None:
        super().__init__(message, param)
        self.code = code


class StreamOptions(BaseModel):
    """OpenAI's `stream_options`: whether the last chunk carries usage."""

    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class OpenAIBody(BaseModel):
    """Fields common to both endpoints; an explicit null means "the default", as OpenAI's API treats it. Other
    fields are kept (`model_extra`) for `refuse_unsupported` to name."""

    model_config = ConfigDict(extra="allow")

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

    def refuse_unsupported(self, endpoint: str) -> None:
        """Raise UnsupportedParameter for the first field this endpoint does not act on (see UNSUPPORTED)."""
        for name, value in (self.model_extra or {}).items():
            if name in UNSUPPORTED:
                if name in _NEUTRAL and _NEUTRAL[name](value, self):
                    continue
                raise UnsupportedParameter(f"`{name}` is not supported by mimo-engine: {UNSUPPORTED[name]}", name)
            raise UnsupportedParameter(f"unknown parameter `{name}` for {endpoint}", name, "unknown_parameter")

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

    def text(self, index: int) -> str:
        """The message's text, its text parts joined; a field the chat template would drop (a name, tool calls) is
        refused, naming `messages[index]`."""
        for name, value in (self.model_extra or {}).items():
            if value not in (None, []) and name not in _MESSAGE_FIELDS:
                where = f"messages[{index}].{name}"
                raise UnsupportedParameter(f"`{where}` is not supported by mimo-engine: the chat template renders "
                                           f"each message's role and text only", where)
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


class ClientGone(Exception):
    """The client closed its connection before its response was ready."""


class BodyTooLarge(StarletteHTTPException):
    """A request body over the server's limit (raised while it arrives, before it is parsed)."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(413, f"the request body is over this server's limit of {limit_bytes / (1 << 20):g} MiB")


def too_large(exc: BodyTooLarge) -> JSONResponse:
    """The 413 response to a body over the limit."""
    return error_response(413, exc.detail, None, "request_too_large")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid_body(_: HttpRequest, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        return error_response(400, f"{'.'.join(where) or 'body'}: {first.get('msg')}", where[0] if where else None)

    @app.exception_handler(InvalidRequest)
    async def _invalid(_: HttpRequest, exc: InvalidRequest) -> JSONResponse:
        return error_response(400, str(exc), exc.param, getattr(exc, "code", None))

    @app.exception_handler(Unservable)
    async def _unservable(_: HttpRequest, exc: Unservable) -> JSONResponse:
        return error_response(400, str(exc), PARAM_PATHS.get(exc.field))

    @app.exception_handler(ContractError)
    async def _bad_extension(_: HttpRequest, exc: ContractError) -> JSONResponse:
        return error_response(400, str(exc), str(exc).split(":", 1)[0])

    @app.exception_handler(UnknownModel)
    async def _unknown(_: HttpRequest, exc: UnknownModel) -> JSONResponse:
        hint = ""
        if exc.name in MODELS:
            hint = "; `mimo-engine serve` serves more with --model, --allow or --allow-pull"
        elif is_model_path(exc.name):  # never opened: a client names only the files the operator named
            hint = "; `mimo-engine serve` serves a GGUF file named with --model or --allow"
        return error_response(404, f"{exc}{hint}", "model", "model_not_found")

    @app.exception_handler(Unavailable)
    async def _unavailable(_: HttpRequest, exc: Unavailable) -> JSONResponse:
        return error_response(503, str(exc), None, "unavailable", "server_error")

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: HttpRequest, exc: BodyTooLarge) -> JSONResponse:
        return too_large(exc)

    @app.exception_handler(ClientGone)
    async def _gone(_: HttpRequest, exc: ClientGone) -> JSONResponse:
        return error_response(499, str(exc), None, "client_closed_request")  # nobody reads it; the access log does

    @app.exception_handler(QueueFull)
    async def _full(_: HttpRequest, exc: QueueFull) -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        return error_response(429, f"{exc}; retry in {RETRY_AFTER_S} s", None, "queue_full", "rate_limit_error",
                              headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: HttpRequest, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), kind="invalid_request_error")

    @app.exception_handler(Exception)
    async def _crash(_: HttpRequest, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        return error_response(500, f"{type(exc).__name__}: {exc}", kind="server_error")


# ---------------------------------------------------------------- the `mimo` response field


def mimo_report(reports: list[MimoReport]) -> dict[str, Any]:
    """The `mimo` field of a response: the engine's report over the request's prompts."""
    return MimoReport.combine(reports).to_dict()


def usage(reports: list[MimoReport]) -> dict[str, Any]:
    """OpenAI's usage object over a request's prompts, with the prompt tokens served from the KV cache."""
    prompt = sum(r.prompt_tokens for r in reports)
    completion = sum(r.completion_tokens for r in reports)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(r.cache.cached_tokens for r in reports)}}


# ---------------------------------------------------------------- submitting and streaming


def submit_all(
    worker: ModelWorker, prompts: list[list[int]], params: SamplingParams, mimo: MimoRequest,
    prompt_logprobs: int | None = None, load_s: float = 0.0,
) -> list[Request]:
    """Submit one request per prompt (`load_s`: how long it waited for its model to load); if any is refused,
    cancel those already queued and re-raise."""
    requests: list[Request] = []
    try:
        for prompt in prompts:
            request = Request(prompt, params, prompt_logprobs, mimo, load_s)
            worker.submit(request.engine)
            requests.append(request)
    except Exception:
        for request in requests:
            request.cancel()
        raise
    return requests


async def merged_events(requests: list[Request]) -> AsyncIterator[tuple[int, Delta | Done | Failed]]:
    """Events of several requests as they come, tagged with the request's position; cancels them if left early."""
    if len(requests) == 1:  # most requests: read its queue directly, without a task and a queue between
        try:
            async for event in requests[0].events():
                yield 0, event
        finally:
            requests[0].cancel()
        return
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


async def hangup(http: HttpRequest) -> None:
    """Return when the client closes its connection (its body was read already, so only that can arrive)."""
    while (await http.receive())["type"] != "http.disconnect":
        pass


async def gather_results(requests: list[Request], http: HttpRequest) -> list[Done]:
    """Wait for every request. If the client hangs up first, its requests are cancelled (their sequences stop and
    free their blocks) and ClientGone is raised; a failed request is a 503."""

    async def every_result() -> list[Done | Failed]:
        return await asyncio.gather(*(r.result() for r in requests))

    results, gone = asyncio.create_task(every_result()), asyncio.create_task(hangup(http))
    try:
        await asyncio.wait({results, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this handler itself is cancelled
        gone.cancel()
        results.cancel()  # a no-op once every request has finished
    if not results.done():
        raise ClientGone("the client closed the connection")
    failed = [r.message for r in results.result() if isinstance(r, Failed)]
    if failed:
        raise Unavailable(failed[0])
    return results.result()


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event line."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def _failure_event(message: str) -> str:
    return sse({"error": {"message": message, "type": "server_error", "param": None, "code": None}})


# ---------------------------------------------------------------- the app


@dataclass(frozen=True)
class ServerOptions:
    """How the server runs: the engine's configuration, which models it serves, the body limit, idle exit and
    shutdown drain."""

    engine: EngineConfig = EngineConfig()
    allow: tuple[str, ...] = ()  # models served too (registry names, GGUF files' paths), loaded on first request
    allow_pull: bool = False  # serve every registry model, loading (and pulling) it on its first request
    max_body_bytes: int = MAX_BODY_BYTES
    idle_timeout_s: float = 0.0  # 0: never exit when idle
    drain_s: float = DRAIN_S


def served_models(models: list[str], options: ServerOptions) -> set[str]:
    """The models a server started with `models` may serve: those, the allowed ones, and with allow_pull every
    registry model."""
    return {*models, *options.allow, *(MODELS if options.allow_pull else ())}


def build_engine(models: list[str], options: ServerOptions) -> Engine:
    """The engine serving `served_models`, with `models` loaded now; Unavailable if one of them cannot load."""
    config = options.engine
    engine = Engine(
        served_models(models, options),
        lambda name, report: LoadedModel.load(name, config.cache_dir, config.precision_policies, config.threads,
                                              report),
        config,
    )
    try:
        for name in models:
            engine.worker(name)
    except Unavailable:
        engine.close()
        raise
    return engine


def create_app(engine: Engine, options: ServerOptions = ServerOptions()) -> FastAPI:
    """The FastAPI app over `engine`, behind the `Gate` middleware; the engine is closed when the app shuts down."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await asyncio.to_thread(engine.close)

    app = FastAPI(title="mimo-engine", lifespan=lifespan)
    app.add_middleware(Gate, engine=engine, max_body_bytes=options.max_body_bytes)
    _install_error_handlers(app)
    _add_info_routes(app, engine, options)
    _add_chat_route(app, engine)
    _add_completion_route(app, engine)
    return app


class Gate:
    """ASGI middleware: refuses a body over `max_body_bytes` with 413 before it is parsed (by its Content-Length, or
    as a chunked body grows past it), counts every request as activity for the idle timeout (and any request but a
    GET as work in flight: the engine is not idle until it has been answered), and logs one access line per
    request. Plain ASGI rather than `@app.middleware`, which would hide a client's disconnect."""

    def __init__(self, app: Callable, engine: Engine, max_body_bytes: int) -> None:
        self.app = app
        self.engine = engine
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.engine.touch()  # any request, /health included, keeps an idle-timeout server alive
        work = scope["method"] != "GET"  # generation, a load; GETs are the quick info routes
        if work:
            self.engine.begin_request()
        started, status = time.perf_counter(), 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self._declared_length(scope) > self.max_body_bytes:
                await too_large(BodyTooLarge(self.max_body_bytes))(scope, receive, send_status)
            else:
                await self.app(scope, self._bounded(receive), send_status)
        finally:
            if work:
                self.engine.end_request()
            client = "%s:%s" % tuple(scope.get("client") or ("-", "-"))
            access_log.info('%s "%s %s" %d %.3f s', client, scope["method"], scope["path"], status,
                            time.perf_counter() - started)

    @staticmethod
    def _declared_length(scope: dict) -> int:
        value = dict(scope["headers"]).get(b"content-length", b"0")
        return int(value) if value.isdigit() else 0  # h11 has refused a malformed one already

    def _bounded(self, receive: Callable) -> Callable:
        received = 0

        async def bounded_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise BodyTooLarge(self.max_body_bytes)
            return message

        return bounded_receive


async def in_daemon_thread(fn: Callable, *args: Any) -> Any:
    """`fn(*args)` in a daemon thread: unlike asyncio.to_thread, the process may exit while it runs (a model pull
    must not hold up a shutdown for minutes)."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(method: str, value: Any) -> None:
        if not future.done():
            getattr(future, method)(value)

    def run() -> None:
        try:
            outcome = ("set_result", fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            outcome = ("set_exception", exc)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name=f"mimo-engine:{fn.__name__}", daemon=True).start()
    return await future


async def resolve(engine: Engine, name: str) -> tuple[ModelWorker, float]:
    """The worker of a model and the seconds this request waited for it to load (0 when it was loaded); a model
    not yet loaded loads off the event loop, so the server keeps serving the others."""
    worker = engine.workers().get(name)
    if worker is not None:
        return worker, 0.0
    started = time.perf_counter()
    worker = await in_daemon_thread(engine.worker, name)
    return worker, round(time.perf_counter() - started, 6)


class LoadBody(BaseModel):
    """The body of POST /load: the served models to load (and pull) now, in the background."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(min_length=1)


def health(engine: Engine, options: ServerOptions) -> EngineHealth:
    """What /health says: the process, the models served and loaded, each model's state (pulling with its bytes,
    loading, ready, failed), whether the engine is at work, and the policies and threads it was started with."""
    config = options.engine
    policies = list(config.precision_policies) if config.precision_policies is not None else None
    return EngineHealth(pid=os.getpid(), models_loaded=engine.loaded(), models_served=sorted(engine.available),
                        busy=engine.busy(), models=engine.model_health(), precision_policies=policies,
                        threads=config.threads)


def _add_info_routes(app: FastAPI, engine: Engine, options: ServerOptions) -> None:
    @app.get("/health")
    async def get_health() -> dict[str, Any]:
        return health(engine, options).to_dict()

    @app.post("/load", status_code=202)
    async def load(body: LoadBody) -> dict[str, Any]:
        """Start loading the named models (a model not served is 404); answers at once with /health's report."""
        engine.request_load(body.models)
        return health(engine, options).to_dict()

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
        return PlainTextResponse(prometheus_text(engine.workers()), media_type="text/plain; version=0.0.4")


# ---------------------------------------------------------------- /v1/chat/completions


def _add_chat_route(app: FastAPI, engine: Engine) -> None:
    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody, http: HttpRequest) -> Any:
        body.refuse_unsupported("/v1/chat/completions")
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        if max_tokens is not None and max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1", "max_tokens")
        params = body.sampling(max_tokens, body.logprobs, body.top_logprobs)
        messages = [{"role": m.role, "content": m.text(i)} for i, m in enumerate(body.messages)]
        worker, load_s = await resolve(engine, body.model)
        tokenizer = worker.model.tokenizer
        prompt = await asyncio.to_thread(_chat_prompt, tokenizer, messages)
        requests = submit_all(worker, [prompt], params, body.extension(), load_s=load_s)
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
            "mimo": mimo_report([done.report]),
        }


def _chat_prompt(tokenizer: Any, messages: list[dict]) -> list[int]:
    """The token ids of a conversation, its message text tokenized as text (no control tokens from a user)."""
    try:
        return tokenizer.encode_chat(messages)
    except Exception as exc:  # the model's own template rejects the conversation (e.g. role order)
        raise InvalidRequest(f"the chat template rejected the messages: {exc}", "messages") from None


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
            final = {**head, "choices": [], "mimo": mimo_report([event.report])}
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
    """The prompts of a body: a string, strings, token ids or lists of token ids (each id within the vocabulary).
    A string is the caller's whole prompt, so control-token text in it is the control token."""
    prompts = body.prompt
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    if not prompts:
        raise InvalidRequest("prompt must not be empty", "prompt")
    for ids in (p for p in prompts if not isinstance(p, str) and p):
        if min(ids) < 0 or max(ids) >= tokenizer.vocab_size:
            raise InvalidRequest(f"prompt token ids must be from 0 to {tokenizer.vocab_size - 1}", "prompt")
    return [Prompt(p, tokenizer.encode(p)) if isinstance(p, str) else Prompt(tokenizer.decode(p), p) for p in prompts]


def _add_completion_route(app: FastAPI, engine: Engine) -> None:
    @app.post("/v1/completions")
    async def completions(body: CompletionBody, http: HttpRequest) -> Any:
        body.refuse_unsupported("/v1/completions")
        if body.max_tokens < (0 if body.echo else 1):
            raise InvalidRequest("max_tokens must be at least 1 (0 only with echo)", "max_tokens")
        params = body.sampling(body.max_tokens, body.logprobs is not None, body.logprobs or 0)
        worker, load_s = await resolve(engine, body.model)
        tokenizer = worker.model.tokenizer
        prompts = await asyncio.to_thread(_completion_prompts, body, tokenizer)
        scoring = body.logprobs if body.echo and body.logprobs is not None else None
        requests = submit_all(worker, [p.tokens for p in prompts], params, body.extension(), scoring, load_s)
        head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": body.model}
        if body.stream:
            stream = _completion_stream(head, requests, prompts, tokenizer, body)
            return StreamingResponse(stream, media_type="text/event-stream")
        results = await gather_results(requests, http)
        choices = await asyncio.to_thread(lambda: [  # echo's logprobs cover whole prompts: off the event loop
            _completion_choice(position * body.n + c.index, prompt, done, c, tokenizer, body)
            for position, (prompt, done) in enumerate(zip(prompts, results))
            for c in done.choices
        ])
        reports = [done.report for done in results]
        return {
            **head,
            "object": "text_completion",
            "choices": choices,
            "usage": usage(reports),
            "mimo": mimo_report(reports),
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
    if len(reports) == len(requests):
        final = {**head, "choices": [], "mimo": mimo_report(reports)}
        if body.stream_options.include_usage:
            final["usage"] = usage(reports)
        yield sse(final)
    yield sse("[DONE]")


# ---------------------------------------------------------------- running it


class EngineServer(uvicorn.Server):
    """uvicorn's server plus the engine's start line, its idle exit, and a bounded drain on shutdown: it stops
    accepting at once, lets requests in flight run for `drain_s`, then fails what is left (streams end with an
    error event) and exits."""

    def __init__(self, config: uvicorn.Config, engine: Engine, options: ServerOptions) -> None:
        super().__init__(config)
        self.engine = engine
        self.options = options
        self._idle: asyncio.Task | None = None

    async def startup(self, sockets: list | None = None) -> None:
        await super().startup(sockets)
        if not self.started:  # uvicorn has said why (the port is taken, say)
            return
        log.info("%s", start_line(self.config.host, self.config.port, self.engine, self.options))
        if self.options.idle_timeout_s:
            self._idle = asyncio.create_task(self._exit_when_idle(self.options.idle_timeout_s))

    async def shutdown(self, sockets: list | None = None) -> None:
        if self._idle:
            self._idle.cancel()
        in_flight = len(self.server_state.tasks)
        if in_flight:
            log.info("stopping: no new connections; %d requests in flight may run %g s more", in_flight,
                     self.options.drain_s)
        cut = asyncio.create_task(self._cut_after(self.options.drain_s))
        try:
            await super().shutdown(sockets)
        finally:
            cut.cancel()

    async def _cut_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        log.warning("drain of %g s over: stopping the requests still running", seconds)
        await asyncio.to_thread(self.engine.close)  # each request fails with "the server is shutting down"

    async def _exit_when_idle(self, timeout_s: float) -> None:
        while True:
            await asyncio.sleep(min(1.0, timeout_s / 4))
            if self.engine.idle_s() >= timeout_s:  # a load or a request in flight is never idle
                log.info("idle for %g s: exiting", timeout_s)
                self.should_exit = True
                return


def start_line(host: str, port: int, engine: Engine, options: ServerOptions) -> str:
    """What the server says once it listens: where, which models, and its limits."""
    loaded, config = engine.loaded(), options.engine
    named = sorted(engine.available - set(loaded) - (set(MODELS) if options.allow_pull else set()))
    lazy = ", ".join((["any registry model"] if options.allow_pull else []) + named)
    return (f"mimo-engine serving http://{host}:{port}/v1 (pid {os.getpid()}); loaded: {', '.join(loaded) or 'none'}"
            f"; on first request: {lazy or 'none'}; body limit {options.max_body_bytes / (1 << 20):g} MiB, "
            f"batch {config.max_batch_size}, queue {config.max_queue}, drain {options.drain_s:g} s; precision "
            f"policies {','.join(resolve_policies(config.precision_policies))}; kernel threads "
            f"{config.threads or 'every core'}")


def log_to_stderr(quiet: bool = False) -> None:
    """Timestamped log lines on stderr: the start line, model loads, one line per request, warnings and errors;
    `quiet` keeps only warnings and errors."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("mimo_engine").setLevel(logging.WARNING if quiet else logging.INFO)


def serve(host: str, port: int, models: list[str], options: ServerOptions = ServerOptions(),
          quiet: bool = False) -> None:
    """Load `models`, then serve until SIGTERM / Ctrl-C or, with an idle timeout, until idle that long.
    Unavailable if a model named to load at start cannot be loaded."""
    log_to_stderr(quiet)
    engine = build_engine(models, options)
    config = uvicorn.Config(create_app(engine, options), host=host, port=port, log_config=None,
                            log_level="warning", access_log=False,
                            timeout_graceful_shutdown=int(options.drain_s + CUT_GRACE_S))
    EngineServer(config, engine, options).run()
