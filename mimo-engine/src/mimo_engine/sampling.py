"""Sampling: from a model's logits to tokens, logprobs in OpenAI's shapes, and text cut at stop strings."""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence

import numpy as np

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat
MAX_N = 16


class InvalidRequest(ValueError):
    """A request asks for something the engine cannot serve; `param` names the field (OpenAI's error shape)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class TokenText(Protocol):
    """The part of the tokenizer that logprob entries and text decoding need."""

    def token_text(self, token: int) -> str: ...

    def token_bytes(self, token: int) -> bytes: ...


@dataclass(frozen=True)
class SamplingParams:
    """How to sample the completion(s) of one request; invalid values raise `InvalidRequest` on construction."""

    max_tokens: int | None = None  # None: until an end-of-sequence token or the context is full
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0

    def __post_init__(self) -> None:
        _check(self.max_tokens is None or self.max_tokens >= 0, "max_tokens", "must be 0 or more")
        _check(0.0 <= self.temperature <= 2.0, "temperature", "must be between 0 and 2")
        _check(0.0 < self.top_p <= 1.0, "top_p", "must be greater than 0 and at most 1")
        _check(self.top_k >= 0, "top_k", "must be 0 (off) or more")
        _check(1 <= self.n <= MAX_N, "n", f"must be between 1 and {MAX_N}")
        _check(len(self.stop) <= MAX_STOP_STRINGS, "stop", f"takes at most {MAX_STOP_STRINGS} strings")
        _check(all(self.stop), "stop", "strings must not be empty")
        _check(0 <= self.top_logprobs <= MAX_TOP_LOGPROBS, "top_logprobs", f"must be between 0 and {MAX_TOP_LOGPROBS}")
        _check(self.logprobs or not self.top_logprobs, "top_logprobs", "needs logprobs to be true")


def _check(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise InvalidRequest(f"{param} {message}", param)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis, computed stably in the logits' own dtype."""
    shifted = logits - logits.max(axis=-1, keepdims=True)  # [..., V]
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))  # [..., V]


def filter_top_k_top_p(logprobs: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """A copy of one row of log-probabilities with everything outside top-k and the top-p nucleus set to -inf."""
    order = np.argsort(-logprobs, kind="stable")  # [V] best first
    keep = len(order) if top_k <= 0 else min(top_k, len(order))
    if top_p < 1.0:
        probs = np.exp(logprobs[order[:keep]])  # [keep]
        cumulative_before = np.cumsum(probs) - probs  # mass of the better tokens
        keep = max(1, int(np.count_nonzero(cumulative_before < top_p * probs.sum())))
    filtered = np.full_like(logprobs, -np.inf)
    filtered[order[:keep]] = logprobs[order[:keep]]
    return filtered


def probabilities(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The distribution a sampled request draws its next token from, given one row of logits: tempered, then
    filtered by top-k and top-p; float64 [V] summing to 1. Speculative verification compares drafts against it."""
    logprobs = log_softmax(logits.astype(np.float32) / np.float32(params.temperature))  # [V]
    if params.top_k > 0 or params.top_p < 1.0:
        logprobs = filter_top_k_top_p(logprobs, params.top_k, params.top_p)
    probs = np.exp(logprobs, dtype=np.float64)  # [V]; float64 so the tail of a 150k vocab still sums
    return probs / probs.sum()


def draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One token drawn from a distribution [V] (not necessarily normalised)."""
    cdf = np.cumsum(probs)  # [V]
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))


def sample_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token from a row of logits: argmax at temperature 0, else a draw from the tempered, filtered distribution."""
    if params.temperature == 0.0:
        return int(np.argmax(logits))
    return draw(probabilities(logits, params), rng)


def choice_rngs(seed: int | None, n: int) -> list[np.random.Generator]:
    """One generator per choice, seeded with seed + index so that a seeded request repeats exactly."""
    return [np.random.default_rng(None if seed is None else (seed + index) % 2**64) for index in range(n)]


@dataclass(frozen=True)
class TokenLogprob:
    """The logprob of one token under the model (before temperature and filters) and the most likely alternatives."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token, logprob), most likely first


def token_logprob(logprobs: np.ndarray, token: int, top_n: int) -> TokenLogprob:
    """The `TokenLogprob` of `token` from one row of log-probabilities, with the `top_n` best alternatives."""
    best = np.argpartition(-logprobs, top_n)[:top_n] if top_n else np.empty(0, dtype=np.int64)  # [top_n] unordered
    best = best[np.argsort(-logprobs[best], kind="stable")]  # [top_n] best first
    return TokenLogprob(int(token), float(logprobs[token]), tuple((int(t), float(logprobs[t])) for t in best))


def chat_logprobs(entries: Iterable[TokenLogprob], tokenizer: TokenText) -> dict:
    """The `logprobs` object of a chat completion choice: `{"content": [{token, logprob, bytes, top_logprobs}]}`."""

    def item(token: int, logprob: float) -> dict:
        return {"token": tokenizer.token_text(token), "logprob": logprob, "bytes": list(tokenizer.token_bytes(token))}

    return {
        "content": [
            {**item(e.token, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]} for e in entries
        ]
    }


def completion_logprobs(
    tokens: Sequence[int], entries: Sequence[TokenLogprob | None], offsets: Sequence[int], tokenizer: TokenText
) -> dict:
    """The legacy completions `logprobs` object; an entry of None (the first prompt token) has null logprobs."""
    return {
        "tokens": [tokenizer.token_text(t) for t in tokens],
        "token_logprobs": [None if e is None else e.logprob for e in entries],
        "top_logprobs": [None if e is None else {tokenizer.token_text(t): lp for t, lp in e.top} for e in entries],
        "text_offset": list(offsets),
    }


class Utf8Stream:
    """Decodes token bytes as they come; a character split over several tokens appears with the token that ends it."""

    def __init__(self, tokenizer: TokenText) -> None:
        self._tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        """The text that `token` completes."""
        return self._decoder.decode(self._tokenizer.token_bytes(token))

    def flush(self) -> str:
        """Whatever bytes are left over at the end, as replacement characters."""
        return self._decoder.decode(b"", final=True)


def text_offsets(tokenizer: TokenText, tokens: Sequence[int], start: int = 0) -> list[int]:
    """For each token, the character offset at which its text starts in the decoded text (OpenAI's `text_offset`)."""
    stream, offsets, position = Utf8Stream(tokenizer), [], start
    for token in tokens:
        offsets.append(position)
        position += len(stream.push(token))
    return offsets


class StopMatcher:
    """Finds stop strings in text that arrives in pieces, even across token boundaries.

    Text that could still be the start of a stop string is held back, so a streamed reply never shows part of one.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add decoded text; returns the text safe to emit now and whether a stop string was reached (it is cut)."""
        pending = self._pending + text
        hits = [i for i in (pending.find(stop) for stop in self._stops) if i >= 0]
        if hits:
            self._pending = ""
            return pending[: min(hits)], True
        held = self._held_length(pending)
        self._pending = pending[len(pending) - held :]
        return pending[: len(pending) - held], False

    def flush(self) -> str:
        """The held-back text, released when the sequence ends without reaching a stop string."""
        pending, self._pending = self._pending, ""
        return pending

    def _held_length(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        for length in range(min(len(text), max((len(s) for s in self._stops), default=1) - 1), 0, -1):
            suffix = text[-length:]
            if any(stop.startswith(suffix) for stop in self._stops):
                return length
        return 0
