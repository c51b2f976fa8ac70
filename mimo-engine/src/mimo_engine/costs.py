"""What a step costs, measured on the steps a worker runs: the scheduler sizes prompt chunks by it.

A step's time is its decode tokens' own (a decode-only step of as many tokens, measured apart) plus what its prompt
chunks add, and a prompt token adds more the more positions it attends to: measured on smollm2-135m beside one
decoding stream (results/interference-smollm2-135m-1500-before.jsonl), a 127-token chunk from position 0 took
439-503 ms, from position 1270 687-696 ms. So the cost of a prompt token is read as a line in the positions it
attends to, fitted through the latest chunk steps.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from itertools import combinations

DECODE_WINDOW = 16  # decode-only steps of one token count whose median is its cost: a few slowed ones do not count
CHUNK_WINDOW = 16  # latest steps with prompt chunks the slope is read from
LEVEL_POINTS = 3  # latest steps with prompt chunks the level is read from
SLOPE_SPREAD = 32  # attended positions two steps must be apart for a slope between them: closer, it is mostly noise


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


def attended(tokens: int, position: int) -> int:
    """Positions a chunk of `tokens` tokens from `position` attends to, summed over its tokens (each sees every
    earlier position and its own)."""
    return tokens * position + tokens * (tokens + 1) // 2


@dataclass(frozen=True)
class ChunkCost:
    """What the scheduler sizes prompt chunks by: the seconds of this step's decode tokens alone, and what a prompt
    token adds, `token_s` plus `position_s` for each position it attends to."""

    decode_s: float
    token_s: float
    position_s: float

    def seconds(self, tokens: int, position: int) -> float:
        """What a chunk of `tokens` tokens from `position` adds to a step."""
        return self.token_s * tokens + self.position_s * attended(tokens, position)

    def tokens_within(self, seconds: float, position: int) -> int:
        """The most tokens a chunk from `position` may have to add at most `seconds` (the largest root of the
        chunk's cost, a quadratic in its tokens)."""
        if seconds <= 0.0:
            return 0
        linear = self.token_s + self.position_s * (position + 0.5)  # cost = position_s / 2 n^2 + linear n
        if self.position_s <= 0.0:
            return int(seconds / linear) if linear > 0.0 else 1 << 30
        half = self.position_s / 2
        n = int((-linear + math.sqrt(linear * linear + 4 * half * seconds)) / (2 * half))
        return n - (self.seconds(n, position) > seconds)  # the root's float rounding, never above the bound


class StepCosts:
    """Costs measured on the steps a worker ran. A decode-only step: the median of the latest DECODE_WINDOW of its
    token count. A prompt token: a line in the positions it attends to, each step with chunks one point (what its
    chunks added, its time less its decode tokens' own, per prompt token, at the mean positions its tokens attended
    to). The line's slope is the median slope between the points of the window (Theil-Sen's: a step slowed by other
    work moves it little); its level is the median of the latest LEVEL_POINTS steps only, so that it follows the load
    and the chunk sizes now. What a step spends whatever its chunks' size (weights decoded for the BLAS products) is
    read as a cost per token at the latest sizes: a chunk sized by it lands where its step fills the time it was
    given, from either side, within a step or two."""

    def __init__(self) -> None:
        self._decode: dict[int, deque[float]] = {}  # decode tokens -> latest decode-only step times
        self._points: deque[tuple[float, float]] = deque(maxlen=CHUNK_WINDOW)  # (mean positions attended, s/token)

    def observe(self, step: StepTiming) -> None:
        """Fold in a step."""
        tokens = step.prompt_tokens
        if not tokens:
            self._decode.setdefault(step.decode_tokens, deque(maxlen=DECODE_WINDOW)).append(step.seconds)
            return
        positions = sum(attended(n, p) for n, p in step.chunks) / tokens
        self._points.append((positions, max(step.seconds - self.decode_s(step.decode_tokens), 0.0) / tokens))

    def decode_s(self, tokens: int) -> float:
        """Seconds of a decode-only step of `tokens` tokens, read from the nearest token count measured (0 with no
        tokens, or before any such step ran)."""
        if not tokens or not self._decode:
            return 0.0
        return statistics.median(self._decode[min(self._decode, key=lambda n: (abs(n - tokens), n))])

    def line(self) -> tuple[float, float] | None:
        """A prompt token's (seconds, more seconds per position it attends to), or None before any chunk ran."""
        if not self._points:
            return None
        slopes = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in combinations(self._points, 2)
                  if abs(b[0] - a[0]) >= SLOPE_SPREAD]
        slope = max(statistics.median(slopes), 0.0) if slopes else 0.0
        latest = list(self._points)[-LEVEL_POINTS:]
        return max(statistics.median(s - slope * x for x, s in latest), 0.0), slope

    def chunk_cost(self, decode_tokens: int) -> ChunkCost | None:
        """What the prompt chunks of a step with `decode_tokens` decode tokens are sized by (None: no chunk ran yet)."""
        line = self.line()
        return None if line is None else ChunkCost(self.decode_s(decode_tokens), *line)
