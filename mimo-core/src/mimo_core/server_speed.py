"""Decode speed and time to first token of an OpenAI-compatible server, measured from the client's side: the one
measure that every server (the embedded engine, llama.cpp, vLLM) can be held to, whatever it reports itself."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Stream:
    """One streamed reply: when it was asked, when its first and last tokens came (perf_counter), how many."""

    asked: float
    first: float | None
    last: float
    tokens: int


def rates(streams: list[Stream]) -> tuple[float, float]:
    """Decode tokens/s of concurrent streams (their tokens after each one's first over the wall time from the first
    token of any to the last of all) and their median time to first token, in seconds."""
    started = [s for s in streams if s.first is not None]
    if not started:
        raise RuntimeError("no stream produced a token")
    start, end = min(s.first for s in started), max(s.last for s in started)
    return (sum(s.tokens - 1 for s in started) / (end - start),
            statistics.median(s.first - s.asked for s in started))


def sse_event(line: str) -> dict | None:
    """The JSON object of a server-sent `data:` line (None for any other line and for `[DONE]`); RuntimeError on an
    error event."""
    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
        return None
    event = json.loads(line[5:])
    if "error" in event:
        raise RuntimeError(f"the server sent an error mid-stream: {event['error']}")
    return event


def has_text(chunk: dict) -> bool:
    """Whether a chat completion chunk carries text (the servers measured send one such chunk per token)."""
    choices = chunk.get("choices") or []
    return bool(choices and (choices[0].get("delta") or {}).get("content"))


async def stream(client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int) -> Stream:
    """One greedy streamed chat reply, read as server-sent events with no SDK objects in between: on a 2-core machine
    the client shares the cores it measures, and the openai client's parsing took about three times the engine
    server's own CPU per token (scratch measurement of CPU seconds per thread, 8 streams)."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.0, "stream": True}
    asked, first, tokens = time.perf_counter(), None, 0
    async with client.stream("POST", f"{url}/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:300]}")
        async for line in response.aiter_lines():
            event = sse_event(line)
            if event is not None and has_text(event):
                tokens += 1
                first = first or time.perf_counter()
    return Stream(asked, first, time.perf_counter(), tokens)


def measure(url: str, model: str, prompt: str, streams: int, max_tokens: int) -> tuple[float, float, int]:
    """Decode tokens/s, time to first token and tokens of `streams` concurrent greedy replies to `prompt`."""
    async def run() -> list[Stream]:
        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=streams)) as client:
            return await asyncio.gather(*(stream(client, url, model, prompt, max_tokens) for _ in range(streams)))

    done = asyncio.run(run())
    return (*rates(done), sum(s.tokens for s in done))
