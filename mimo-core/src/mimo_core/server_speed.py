"""Decode speed and time to first token of an OpenAI-compatible server, measured from the client's side: the one
measure that every server (the embedded engine, llama.cpp, vLLM) can be held to, whatever it reports itself."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

import openai


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


async def stream(client: openai.AsyncOpenAI, model: str, prompt: str, max_tokens: int) -> Stream:
    """One greedy streamed chat reply; every chunk with text is a token (the servers measured send one per token)."""
    asked, first, tokens = time.perf_counter(), None, 0
    response = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
        temperature=0.0, stream=True)
    async for chunk in response:
        if chunk.choices and chunk.choices[0].delta.content:
            tokens += 1
            first = first or time.perf_counter()
    return Stream(asked, first, time.perf_counter(), tokens)


def measure(url: str, model: str, prompt: str, streams: int, max_tokens: int) -> tuple[float, float, int]:
    """Decode tokens/s, time to first token and tokens of `streams` concurrent greedy replies to `prompt`."""
    async def run() -> list[Stream]:
        async with openai.AsyncOpenAI(base_url=url, api_key="not-needed", max_retries=0, timeout=600) as client:
            return await asyncio.gather(*(stream(client, model, prompt, max_tokens) for _ in range(streams)))

    done = asyncio.run(run())
    return (*rates(done), sum(s.tokens for s in done))
