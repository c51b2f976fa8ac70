"""One async client for every LLM call: an OpenAI-compatible endpoint, remote or the embedded engine."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import openai

from .extensions import MimoRequest
from .settings import Settings

EMBEDDED_API_KEY = "embedded-engine"  # the local engine checks no key; the openai client insists on one


@dataclass
class Usage:
    """One call's usage as the server reported it; `cached_tokens` is None where it gave no
    `prompt_tokens_details.cached_tokens`."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None


@dataclass
class TextTokenLogprob:
    """One token of a choice or prompt with its logprob and the alternatives the server returned."""

    token: str
    logprob: float | None
    top_logprobs: dict[str, float] = field(default_factory=dict)
    offset: int | None = None  # where the token starts in the choice's text (completions), where the server says


@dataclass
class Completion:
    """What one call returned: the text of each choice, logprobs, usage, latency and the engine's `mimo` report."""

    texts: list[str]
    finish_reasons: list[str | None]
    model: str
    usage: Usage
    latency_s: float
    logprobs: list[list[TextTokenLogprob]] | None = None
    engine: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        """The first choice's text."""
        return self.texts[0] if self.texts else ""


STOPPED = "stopped"  # the finish reason of a streamed choice the caller ended


class StopStream(Exception):
    """Raised by a chat's `on_chunk` to end its stream: the caller has heard enough. The response is closed at once,
    which is how a server learns to stop generating (the embedded engine frees the sequence's slot)."""


@dataclass
class StreamChunk:
    """What one streamed chunk brought for one choice: its text and its tokens with their logprobs (when asked)."""

    index: int
    text: str
    tokens: list[TextTokenLogprob] = field(default_factory=list)


def _usage(raw: Any) -> Usage:
    if raw is None:
        return Usage(calls=1)
    details = getattr(raw, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    return Usage(calls=1, prompt_tokens=raw.prompt_tokens or 0, completion_tokens=raw.completion_tokens or 0,
                 cached_tokens=cached if isinstance(cached, int) else None)


def _engine_report(response: Any) -> dict[str, Any] | None:
    extra = getattr(response, "model_extra", None) or {}
    return extra.get("mimo")


def _chat_logprobs(choice: Any) -> list[TextTokenLogprob] | None:
    if choice.logprobs is None or choice.logprobs.content is None:
        return None
    return [
        TextTokenLogprob(t.token, t.logprob, {alt.token: alt.logprob for alt in (t.top_logprobs or [])})
        for t in choice.logprobs.content
    ]


def _text_logprobs(choice: Any) -> list[TextTokenLogprob] | None:
    lp = choice.logprobs
    if lp is None or lp.tokens is None:
        return None
    tops = lp.top_logprobs or [None] * len(lp.tokens)
    offsets = lp.text_offset or [None] * len(lp.tokens)
    return [TextTokenLogprob(tok, p, dict(top or {}), offset)
            for tok, p, top, offset in zip(lp.tokens, lp.token_logprobs, tops, offsets)]


class LLMClient:
    """Chat and text completions over `openai.AsyncOpenAI`, bounded in concurrency, timed, retried by openai.

    With `MIMO_BASE_URL` unset it finds or starts the shared embedded engine on first use."""

    def __init__(self, settings: Settings, engine_starter: Callable[[Settings], str] | None = None):
        self.settings = settings
        self._engine_starter = engine_starter
        self._client: openai.AsyncOpenAI | None = None
        self._client_lock = asyncio.Lock()
        self._semaphore = asyncio.Semaphore(settings.concurrency)

    def _base_url(self) -> str:
        if not self.settings.embedded:
            return self.settings.base_url  # type: ignore[return-value]
        if self._engine_starter is None:
            from .daemon import ensure_engine  # imported here: remote-only use never touches the daemon

            self._engine_starter = ensure_engine
        return self._engine_starter(self.settings)

    async def _openai(self, stale: openai.AsyncOpenAI | None = None) -> openai.AsyncOpenAI:
        """The shared openai client. `stale` is one that could not connect: the first caller to report it replaces
        it (finding or restarting the engine), and callers that failed on it too reuse that replacement."""
        async with self._client_lock:
            if self._client is None or self._client is stale:
                base_url = await asyncio.to_thread(self._base_url)
                old, self._client = self._client, openai.AsyncOpenAI(
                    base_url=base_url,
                    api_key=self.settings.api_key or EMBEDDED_API_KEY,
                    timeout=self.settings.timeout_s,
                    max_retries=self.settings.max_retries,
                )
                if old is not None:
                    await old.close()
            return self._client

    def _extra_body(self, mimo: MimoRequest | None) -> dict[str, Any] | None:
        if mimo is None or not self.settings.send_extensions:
            return None
        return {"mimo": {key: value for key, value in mimo.to_dict().items() if value is not None}}

    async def _request(self, make_call: Callable[[openai.AsyncOpenAI], Any]) -> tuple[Any, float]:
        async with self._semaphore:
            client = await self._openai()
            started = time.perf_counter()
            try:
                response = await make_call(client)
            except openai.APIConnectionError:
                if not self.settings.embedded:
                    raise
                # The shared engine may have exited (idle timeout, crash): find or start it once more.
                client = await self._openai(stale=client)
                started = time.perf_counter()
                response = await make_call(client)
            return response, time.perf_counter() - started

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        n: int = 1,
        temperature: float = 0.0,
        top_p: float | None = None,
        seed: int | None = None,
        stop: list[str] | None = None,
        max_tokens: int = 512,
        logprobs: bool = False,
        top_logprobs: int | None = None,
        mimo: MimoRequest | None = None,
        on_text: Callable[[str], None] | None = None,
        on_chunk: Callable[[StreamChunk], None] | None = None,
    ) -> Completion:
        """A chat completion. With `on_chunk` the reply streams and every chunk of every choice (text, and tokens with
        their logprobs when asked) is passed to it as it arrives; `on_chunk` may raise StopStream to end the stream,
        and choices it cut short finish as `stopped`, their completion tokens those received. `on_text` is the
        simple form: each new piece of the first choice's text."""
        model = model or self.settings.oracle_model
        params: dict[str, Any] = dict(
            model=model,
            messages=messages,
            n=n,
            temperature=temperature,
            max_tokens=max_tokens,
            extra_body=self._extra_body(mimo),
        )
        optional = {"top_p": top_p, "seed": seed, "stop": stop, "top_logprobs": top_logprobs}
        params.update({k: v for k, v in optional.items() if v is not None})
        if logprobs:
            params["logprobs"] = True
        if on_text is not None and on_chunk is None:
            on_chunk = lambda chunk: on_text(chunk.text) if chunk.index == 0 and chunk.text else None  # noqa: E731
        if on_chunk is not None:
            return await self._chat_stream(params, on_chunk)
        response, latency = await self._request(lambda c: c.chat.completions.create(**params))
        choices = sorted(response.choices, key=lambda ch: ch.index)
        return Completion(
            texts=[ch.message.content or "" for ch in choices],
            finish_reasons=[ch.finish_reason for ch in choices],
            model=response.model,
            usage=_usage(response.usage),
            latency_s=latency,
            logprobs=[_chat_logprobs(ch) or [] for ch in choices] if logprobs else None,
            engine=_engine_report(response),
        )

    async def _chat_stream(self, params: dict[str, Any], on_chunk: Callable[[StreamChunk], None]) -> Completion:
        params = dict(params, stream=True, stream_options={"include_usage": True})

        async def consume(client: openai.AsyncOpenAI) -> dict[str, Any]:
            state: dict[str, Any] = {"texts": {}, "tokens": {}, "finish": {}, "usage": None, "engine": None,
                                     "model": params["model"], "stopped": False, "received": 0}
            stream = await client.chat.completions.create(**params)
            async with stream:  # closed however the loop ends: a stopped stream stops the server's generation
                try:
                    async for raw in stream:
                        state["model"] = raw.model or state["model"]
                        state["usage"] = raw.usage or state["usage"]
                        state["engine"] = _engine_report(raw) or state["engine"]
                        for choice in raw.choices:
                            chunk = StreamChunk(choice.index, choice.delta.content or "",
                                                _chat_logprobs(choice) or [])
                            state["texts"].setdefault(chunk.index, []).append(chunk.text)
                            state["tokens"].setdefault(chunk.index, []).extend(chunk.tokens)
                            if choice.finish_reason:
                                state["finish"][chunk.index] = choice.finish_reason
                            if chunk.text or chunk.tokens:
                                state["received"] += len(chunk.tokens) or 1  # without logprobs: a chunk a token
                                on_chunk(chunk)
                except StopStream:
                    state["stopped"] = True
            return state

        state, latency = await self._request(consume)
        indices = sorted(state["texts"])
        tokens = [state["tokens"][i] for i in indices]
        usage = state["usage"]
        return Completion(
            texts=["".join(state["texts"][i]) for i in indices],
            finish_reasons=[state["finish"].get(i, STOPPED if state["stopped"] else None) for i in indices],
            model=state["model"],
            # a stopped stream never gets the server's usage: count what arrived
            usage=_usage(usage) if usage else Usage(1, 0, state["received"]),
            latency_s=latency,
            logprobs=tokens if any(tokens) else None,
            engine=state["engine"],
        )

    async def complete(
        self,
        prompt: str | list[str],
        *,
        model: str | None = None,
        max_tokens: int = 0,
        echo: bool = True,
        logprobs: int | None = 1,
        temperature: float = 0.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        mimo: MimoRequest | None = None,
    ) -> Completion:
        """A text completion (one choice per prompt when `prompt` is a list); the defaults (echo, no new tokens,
        logprobs) score `prompt` token by token."""
        params: dict[str, Any] = dict(
            model=model or self.settings.oracle_model,
            prompt=prompt,
            max_tokens=max_tokens,
            echo=echo,
            temperature=temperature,
            extra_body=self._extra_body(mimo),
        )
        optional = {"logprobs": logprobs, "seed": seed, "stop": stop}
        params.update({k: v for k, v in optional.items() if v is not None})
        response, latency = await self._request(lambda c: c.completions.create(**params))
        choices = sorted(response.choices, key=lambda ch: ch.index)
        return Completion(
            texts=[ch.text for ch in choices],
            finish_reasons=[ch.finish_reason for ch in choices],
            model=response.model,
            usage=_usage(response.usage),
            latency_s=latency,
            logprobs=[_text_logprobs(ch) or [] for ch in choices] if logprobs is not None else None,
            engine=_engine_report(response),
        )

    async def list_models(self) -> list[str]:
        """The model ids the endpoint serves."""
        response, _ = await self._request(lambda c: c.models.list())
        return [m.id for m in response.data]

    async def close(self) -> None:
        """Close the HTTP connections."""
        if self._client is not None:
            await self._client.close()
            self._client = None
