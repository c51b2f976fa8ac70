"""The prompts of the loop, all built on the record's shared prefix (system prompt + task).

The completions endpoint takes text, so chat turns are rendered in ChatML, the template of every model the embedded
engine serves; the rendered prefix is token for token the one a chat request about the record starts with. Scoring
prompts put the rating question after the solution, so the k prompts of a round are nested: prompt i+1 repeats
prompt i up to the end of step i, and a prefix cache computes the shared part once."""

from __future__ import annotations

from typing import Any

from mimo_core.prompts import build_messages, shared_prefix
from mimo_core.record import TaskRecord

RATE = (
    "Here is a partial solution to the task above:\n\n{solution}\n\n"
    "Rate its last step: is it correct and useful? Reply with one digit from 0 (certainly wrong) to 9 (certainly "
    "correct)."
)
RATING = "Rating: "  # the reply is started for the oracle, so that its next token is the score
CONTINUE = "Continue your solution from where it stopped: write only the next step."
# ChatML control markers: text from a task or a model must never turn into them.
CONTROL = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


def neutralise(text: str) -> str:
    """`text` with any ChatML control marker broken up, so that a hostile task or step cannot open or close a turn."""
    for marker in CONTROL:
        text = text.replace(marker, marker.replace("<|", "< |"))
    return text


def chatml(messages: list[dict[str, Any]], reply: str | None = None) -> str:
    """Messages rendered in ChatML, then the assistant's turn opened; `reply` starts that turn, unfinished."""
    turns = "".join(f"<|im_start|>{m['role']}\n{neutralise(m['content'])}<|im_end|>\n" for m in messages)
    return f"{turns}<|im_start|>assistant\n{'' if reply is None else neutralise(reply)}"


def continue_text(record: TaskRecord, solution: str) -> str:
    """A completions prompt in which the model goes on writing `solution` (the chain so far)."""
    return chatml(shared_prefix(record), solution)


def continue_messages(record: TaskRecord, solution: str) -> list[dict[str, Any]]:
    """The same for a chat-only endpoint, which cannot continue a reply: the chain so far, then a request to go on."""
    if not solution:
        return shared_prefix(record)
    return build_messages(record, {"role": "assistant", "content": solution.strip()},
                          {"role": "user", "content": CONTINUE})


def rate_messages(record: TaskRecord, solution: str) -> list[dict[str, Any]]:
    """Chat messages asking the oracle to rate the last step of `solution`."""
    return build_messages(record, {"role": "user", "content": RATE.format(solution=solution)})


def rate_text(record: TaskRecord, solution: str) -> str:
    """A completions prompt whose next token is the oracle's rating of the last step of `solution`."""
    return chatml(rate_messages(record, solution), RATING)
