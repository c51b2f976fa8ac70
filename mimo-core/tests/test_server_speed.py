"""mimo_core.server_speed's figures from known streams (no server)."""

import pytest

from mimo_core.server_speed import Stream, has_text, rates, sse_event


def test_rates_count_tokens_after_each_first_over_the_wall_time_from_the_first():
    streams = [Stream(asked=0.0, first=0.5, last=2.5, tokens=11), Stream(asked=0.0, first=1.0, last=4.5, tokens=21),
               Stream(asked=0.0, first=2.0, last=3.0, tokens=5)]
    rate, ttft = rates(streams)
    assert rate == pytest.approx((10 + 20 + 4) / (4.5 - 0.5))
    assert ttft == pytest.approx(1.0)  # the median stream's
    with pytest.raises(RuntimeError):
        rates([Stream(0.0, None, 1.0, 0)])


def test_an_sse_line_is_an_event_only_when_it_carries_data_and_text_only_in_a_delta():
    text = sse_event('data: {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}')
    assert has_text(text)
    assert not has_text(sse_event('data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}'))
    assert not has_text(sse_event('data: {"choices": [], "usage": {"completion_tokens": 3}}'))
    assert sse_event("data: [DONE]") is None
    assert sse_event(": keep-alive") is None and sse_event("") is None


def test_an_error_event_mid_stream_is_raised_never_counted():
    with pytest.raises(RuntimeError, match="mid-stream"):
        sse_event('data: {"error": {"message": "the model failed"}}')
