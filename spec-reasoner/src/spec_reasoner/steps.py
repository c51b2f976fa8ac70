"""Reasoning steps as text: split on a delimiter, joined back, and the final-answer line that ends a chain.

Draft and oracle may have different tokenizers, so a step is text, never tokens."""

from __future__ import annotations

import re

from mimo_core.answers import extract_answer

DELIMITER = "\n\n"  # SpecReason's step boundary: a blank line

# The final line each domain's system prompt asks for; a chain that contains it is finished.
FINAL_LINE = {
    "math": re.compile(r"answer\s+is\b|####|\\boxed\{", re.IGNORECASE),
    "triage": re.compile(r"\bESI(?:\s+triage)?\s+level\s*(?:is|:|=)?\s*[1-5]\b", re.IGNORECASE),
    "coding": re.compile(r"```[^\n]*\n.*?```", re.DOTALL),
    "general": re.compile(r"^\s*answer\s*:", re.IGNORECASE | re.MULTILINE),
}


def split_steps(text: str, delimiter: str = DELIMITER) -> list[str]:
    """The non-empty steps of `text`, each stripped of surrounding whitespace."""
    return [piece.strip() for piece in text.split(delimiter) if piece.strip()]


def first_step(text: str, delimiter: str = DELIMITER) -> str:
    """The first step of a generation ("" when it is empty), in case the server ignored the stop sequence."""
    steps = split_steps(text, delimiter)
    return steps[0] if steps else ""


def join_steps(steps: list[str], delimiter: str = DELIMITER) -> str:
    """The chain's text, as the models read it."""
    return delimiter.join(steps)


def continuation(steps: list[str], delimiter: str = DELIMITER) -> str:
    """The text a model continues from: the steps so far and a delimiter, so that it starts a new step."""
    return join_steps(steps, delimiter) + delimiter if steps else ""


def final_answer(domain: str, text: str) -> str | None:
    """The answer of `text` if it already holds its domain's final line, else None."""
    if not FINAL_LINE[domain].search(text):
        return None
    return extract_answer(domain, text)
