"""The agents' streaming seam: one chat request whose chunks (text, tokens and logprobs) reach the caller as they are
generated, and which the caller may end at any token (raise StopStream) or cancel. It is the record's
`StageContext.chat` with `on_chunk`, so every agent runs under the record's plan and is counted in its `served`
figures; this module names it for the orchestrator, and tests replace it with a fake backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mimo_core.client import STOPPED, Completion, StopStream
from mimo_core.client import StreamChunk as Chunk
from mimo_core.stage import StageContext

__all__ = ["STOPPED", "Chunk", "StopStream", "stream_chat"]


async def stream_chat(ctx: StageContext, params: dict[str, Any], on_token: Callable[[Chunk], None]) -> Completion:
    """Stream one chat request for the context's record (`params`: `messages` and the keyword arguments of
    `LLMClient.chat`)."""
    kwargs = {key: value for key, value in params.items() if key != "messages"}
    return await ctx.chat(params["messages"], **kwargs, on_chunk=on_token)
