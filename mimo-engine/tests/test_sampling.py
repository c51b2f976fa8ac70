"""Sampling: greedy, seeded reproducibility, top-k / top-p, logprob shapes, stop strings across tokens."""

import numpy as np
import pytest

from mimo_engine.sampling import (
    InvalidRequest,
    SamplingParams,
    StopMatcher,
    Utf8Stream,
    chat_logprobs,
    choice_rngs,
    completion_logprobs,
    filter_top_k_top_p,
    log_softmax,
    sample_token,
    text_offsets,
    token_logprob,
)

LOGITS = np.log(np.array([0.05, 0.5, 0.3, 0.15], dtype=np.float32))


class ByteTokenizer:
    """Token i is the byte i: enough to test text decoding and logprob shapes."""

    def token_bytes(self, token: int) -> bytes:
        return bytes([token])

    def token_text(self, token: int) -> str:
        return bytes([token]).decode("utf-8", errors="replace")


def draws(params: SamplingParams, seed: int, count: int = 200) -> list[int]:
    rng = np.random.default_rng(seed)
    return [sample_token(LOGITS, params, rng) for _ in range(count)]


def test_log_softmax_normalises():
    logprobs = log_softmax(np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, 0.0]], dtype=np.float32))
    assert np.allclose(np.exp(logprobs).sum(axis=-1), 1.0)
    assert logprobs.dtype == np.float32
    assert np.isclose(logprobs[1, 0], np.log(0.5))


def test_temperature_zero_is_greedy():
    assert set(draws(SamplingParams(temperature=0.0), seed=1)) == {1}


def test_same_seed_same_tokens_and_choices_differ():
    params = SamplingParams(temperature=1.0, seed=7, n=2)
    first, second = choice_rngs(7, 2), choice_rngs(7, 2)
    a = [sample_token(LOGITS, params, first[0]) for _ in range(50)]
    assert a == [sample_token(LOGITS, params, second[0]) for _ in range(50)]
    assert a != [sample_token(LOGITS, params, first[1]) for _ in range(50)]


def test_sampling_follows_the_distribution():
    counts = np.bincount(draws(SamplingParams(temperature=1.0), seed=3, count=4000), minlength=4) / 4000
    assert np.allclose(counts, np.exp(LOGITS), atol=0.03)


def test_top_k_and_top_p_restrict_the_candidates():
    assert set(draws(SamplingParams(top_k=2), seed=4)) == {1, 2}
    assert set(draws(SamplingParams(top_p=0.75), seed=5)) == {1, 2}  # 0.5 alone is short of 0.75; 0.5+0.3 is enough
    assert set(draws(SamplingParams(top_p=0.4), seed=6)) == {1}  # the best token is always kept
    filtered = filter_top_k_top_p(log_softmax(LOGITS), top_k=3, top_p=1.0)
    assert np.isneginf(filtered[0]) and np.isfinite(filtered[1:]).all()


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"stop": ("",)}, "stop"),
        ({"stop": tuple("abcde")}, "stop"),
        ({"top_logprobs": 3}, "top_logprobs"),  # without logprobs
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ],
)
def test_invalid_params_name_the_field(kwargs, param):
    with pytest.raises(InvalidRequest) as info:
        SamplingParams(**kwargs)
    assert info.value.param == param


def test_token_logprob_and_openai_shapes():
    entry = token_logprob(log_softmax(LOGITS), token=2, top_n=2)
    assert entry.token == 2 and np.isclose(entry.logprob, np.log(0.3), atol=1e-5)
    assert [t for t, _ in entry.top] == [1, 2]
    tokenizer = ByteTokenizer()
    chat = chat_logprobs([entry], tokenizer)["content"][0]
    assert chat["token"] == "\x02" and chat["bytes"] == [2] and len(chat["top_logprobs"]) == 2
    legacy = completion_logprobs([65, 66], [None, entry], [0, 1], tokenizer)
    assert legacy["tokens"] == ["A", "B"] and legacy["token_logprobs"][0] is None
    assert legacy["top_logprobs"][0] is None and list(legacy["top_logprobs"][1].values())[0] == entry.top[0][1]


def test_multibyte_characters_split_over_tokens():
    tokenizer = ByteTokenizer()
    euro = list("€x".encode())  # three bytes, then one
    stream = Utf8Stream(tokenizer)
    assert [stream.push(t) for t in euro] == ["", "", "€", "x"]
    assert text_offsets(tokenizer, euro, start=5) == [5, 5, 5, 6]


def feed(matcher: StopMatcher, pieces: list[str]) -> tuple[str, bool]:
    emitted = ""
    for piece in pieces:
        text, stopped = matcher.push(piece)
        emitted += text
        if stopped:
            return emitted, True
    return emitted + matcher.flush(), False


def test_stop_string_across_tokens_is_cut():
    assert feed(StopMatcher(["\n\n"]), ["Hello", " world\n", "\nmore"]) == ("Hello world", True)
    assert feed(StopMatcher(["END", "###"]), ["a#", "#", "#b"]) == ("a", True)


def test_possible_stop_start_is_held_back_then_released():
    matcher = StopMatcher(["STOP"])
    assert matcher.push("go ST") == ("go ", False)  # "ST" might start "STOP"
    assert matcher.push("AR") == ("STAR", False)  # it did not
    assert feed(StopMatcher(["STOP"]), ["abc", "ST"]) == ("abcST", False)  # released at the end
    assert feed(StopMatcher([]), ["x", "y"]) == ("xy", False)
