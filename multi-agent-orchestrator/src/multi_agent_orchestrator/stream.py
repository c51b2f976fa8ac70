"""A streamed chat completion whose tokens, with their logprobs, reach the caller as they are generated.

The caller may end the stream at any token (raise `StopStream` from `on_token`) or cancel its task: either way the
HTTP response is closed at once, which is how a server learns to stop generating (the embedded engine frees the
sequence's decode slot when its client goes away). `LLMClient.chat` streams text only, so this reads the stream
itself, through the client's request path (its concurrency bound and its engine restart).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import openai

from mimo_core.client import Completion, LLMClient, TokenLogprob, Usage

STOPPED = "stopped"  # the finish reason of a choice the caller ended


class StopStream(Exception):
    """Raised by `on_token` to end the stream: the caller has heard enough."""


@dataclass
class Chunk:
    """What one streamed chunk brought for one choice: its text and the logprobs of its tokens."""

    index: int
    text: str
    tokens: list[TokenLogprob] = field(default_factory=list)


def _chunk_choice(choice: Any) -> Chunk:
    content = choice.logprobs.content if choice.logprobs is not None else None
    tokens = [
        TokenLogprob(t.token, t.logprob, {alt.token: alt.logprob for alt in (t.top_logprobs or [])})
        for t in content or []
    ]
    return Chunk(choice.index, choice.delta.content or "", tokens)


async def stream_chat(
    client: LLMClient,
    params: dict[str, Any],
    on_token: Callable[[Chunk], None],
) -> Completion:
    """Stream one chat request (`params` as openai's `chat.completions.create` takes them) chunk by chunk.

    Returns what arrived, as a Completion; choices the caller stopped end with finish reason `stopped`, and their
    completion tokens are those received (the server sends usage only at the end of a stream)."""
    params = dict(params, stream=True, stream_options={"include_usage": True})

    async def consume(api: openai.AsyncOpenAI) -> dict[str, Any]:
        state: dict[str, Any] = {"texts": {}, "tokens": {}, "finish": {}, "usage": None, "engine": None,
                                 "model": params["model"], "stopped": False, "received": 0}
        stream = await api.chat.completions.create(**params)
        async with stream:  # closes the response however the loop ends
            try:
                async for raw in stream:
                    state["model"] = raw.model or state["model"]
                    state["usage"] = raw.usage or state["usage"]
                    state["engine"] = (raw.model_extra or {}).get("mimo") or state["engine"]
                    for choice in raw.choices:
                        chunk = _chunk_choice(choice)
                        state["texts"].setdefault(chunk.index, []).append(chunk.text)
                        state["tokens"].setdefault(chunk.index, []).extend(chunk.tokens)
                        if choice.finish_reason:
                            state["finish"][chunk.index] = choice.finish_reason
                        if chunk.text or chunk.tokens:
                            state["received"] += len(chunk.tokens) or 1  # without logprobs: a chunk per token
                            on_token(chunk)
            except StopStream:
                state["stopped"] = True
        return state

    state, latency = await client._request(consume)  # noqa: SLF001 - the client's bounded, restarting request path
    indices = sorted(state["texts"])
    tokens = [state["tokens"][i] for i in indices]
    usage = state["usage"]
    return Completion(
        texts=["".join(state["texts"][i]) for i in indices],
        finish_reasons=[state["finish"].get(i, STOPPED if state["stopped"] else None) for i in indices],
        model=state["model"],
        usage=Usage(1, usage.prompt_tokens or 0, usage.completion_tokens or 0) if usage else Usage(1, 0, state["received"]),
        latency_s=latency,
        logprobs=tokens if any(tokens) else None,
        engine=state["engine"],
    )
