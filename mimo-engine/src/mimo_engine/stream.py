"""A request on the asyncio side: the engine request it submits, and the queue its events arrive on.

The worker thread knows only `EngineRequest` and its sink; this is where the sink meets an event loop, so the server
(and the benchmarks) can await a request's events and cancel it when its client goes away.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from mimo_core.extensions import MimoRequest
from mimo_engine.output import Delta, Done, Event, Failed
from mimo_engine.sampling import SamplingParams
from mimo_engine.scheduler import EngineRequest


class Request:
    """One request of an asyncio caller: `engine` is what a worker's `submit` takes, and its events come back
    here, in order: Delta* per choice, then one Done or Failed."""

    def __init__(self, prompt: list[int], params: SamplingParams, prompt_logprobs: int | None = None,
                 mimo: MimoRequest | None = None, load_s: float = 0.0) -> None:
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue = asyncio.Queue()
        self.engine = EngineRequest(prompt, params, self._emit, prompt_logprobs, mimo or MimoRequest(),
                                    load_s=load_s)

    def _emit(self, event: Event) -> None:
        """Hand an event to the request's event loop, from the worker thread. A loop that has closed (its caller
        went away without cancelling) cancels the request: the worker retires it at its next step."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody will read this request's events
            self.engine.cancelled = True

    def cancel(self) -> None:
        """Stop generating for this request (the client went away); the worker frees its sequences."""
        self.engine.cancelled = True

    async def events(self) -> AsyncIterator[Event]:
        """The request's events, up to and including Done or Failed."""
        while True:
            event = await self._events.get()
            yield event
            if not isinstance(event, Delta):
                return

    async def result(self) -> Done | Failed:
        """Wait for the end; if the waiting task is cancelled (its client went away), the request is cancelled."""
        try:
            async for event in self.events():
                pass
            return event  # the last one: Done or Failed
        finally:
            self.cancel()  # a no-op once Done has arrived
