"""mimo_core.server_speed's figures from known streams (no server)."""

import pytest

from mimo_core.server_speed import Stream, rates


def test_rates_count_tokens_after_each_first_over_the_wall_time_from_the_first():
    streams = [Stream(asked=0.0, first=0.5, last=2.5, tokens=11), Stream(asked=0.0, first=1.0, last=4.5, tokens=21),
               Stream(asked=0.0, first=2.0, last=3.0, tokens=5)]
    rate, ttft = rates(streams)
    assert rate == pytest.approx((10 + 20 + 4) / (4.5 - 0.5))
    assert ttft == pytest.approx(1.0)  # the median stream's
    with pytest.raises(RuntimeError):
        rates([Stream(0.0, None, 1.0, 0)])
