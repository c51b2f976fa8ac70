"""What a step costs, measured on the steps a worker runs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepTiming:
    """One step as it ran: its decode tokens (a token of each decoding sequence, and their drafted blocks), its
    prompt chunks as (tokens, position of the first), and its wall time."""

    decode_tokens: int
    chunks: tuple[tuple[int, int], ...]
    seconds: float

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens the step computed."""
        return sum(n for n, _ in self.chunks)
