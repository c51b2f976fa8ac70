"""The shared prompt prefix (system prompt + task) that every model-calling stage builds on.

Every stage puts its own instructions *after* this prefix, so its tokens are identical across the calls of a
record and the KV cache stage can warm them once for all later calls."""

from __future__ import annotations

from typing import Any

from .record import TaskRecord

SYSTEM_PROMPTS: dict[str, str] = {
    "math": (
        "You are a careful mathematician. Solve the problem step by step, one short step per line. "
        "End with a final line of the form 'The answer is N.' where N is a number."
    ),
    "coding": (
        "You are an expert Python programmer. Complete the function so that it is correct for every input. "
        "Reply with the whole function in one ```python code block."
    ),
    "triage": (
        "You are an emergency department triage nurse using the Emergency Severity Index (ESI v4, levels 1-5, "
        "1 most urgent). Reason briefly about life-saving interventions, high-risk features, expected resources "
        "and vital signs. End with a final line of the form 'ESI level: N'."
    ),
    "general": "You are a helpful, precise assistant. Answer concisely and end with a final line 'Answer: ...'.",
}


def system_prompt(domain: str) -> str:
    """The system prompt of a domain."""
    return SYSTEM_PROMPTS[domain]


def shared_prefix(record: TaskRecord) -> list[dict[str, Any]]:
    """The chat messages every call about `record` starts with; never includes `record.reference`."""
    return [
        {"role": "system", "content": system_prompt(record.domain)},
        {"role": "user", "content": record.task},
    ]


def build_messages(record: TaskRecord, *turns: dict[str, Any]) -> list[dict[str, Any]]:
    """The shared prefix followed by a stage's own turns (its instructions, drafts to verify, ...)."""
    return [*shared_prefix(record), *turns]
