"""DeepConf's measures on hand-made logprobs."""

import math

import numpy as np
import pytest

from multi_agent_orchestrator.confidence import (
    RunningGroup, certainty, group_confidences, stop_threshold, token_confidence, token_entropy, trace_confidence,
)


def test_token_confidence_is_minus_the_mean_of_the_top_logprobs():
    assert token_confidence([-0.01, -5.0, -7.0]) == pytest.approx((0.01 + 5 + 7) / 3)
    # a peaked distribution is more confident than a flat one
    assert token_confidence([-0.01, -6.0, -8.0]) > token_confidence([-1.0, -1.2, -1.3])
    assert token_confidence([]) == 0.0


def test_entropy_counts_the_mass_left_out():
    assert token_entropy([0.0]) == pytest.approx(0.0)
    two = [math.log(0.5), math.log(0.5)]
    assert token_entropy(two) == pytest.approx(math.log(2))
    assert token_entropy([math.log(0.5)]) == pytest.approx(math.log(2))  # 0.5 shown, 0.5 left out


def test_groups_slide_and_the_trace_measures_pick_their_part():
    confidences = [5.0] * 20 + [1.0] * 16 + [4.0] * 20
    groups = group_confidences(confidences, 16)
    assert len(groups) == len(confidences) - 15 and groups.min() == pytest.approx(1.0)
    assert trace_confidence(confidences, "lowest_group") == pytest.approx(1.0)
    assert trace_confidence(confidences, "tail", tail=10) == pytest.approx(4.0)
    assert trace_confidence(confidences, "mean") == pytest.approx(np.mean(confidences))
    assert 1.0 <= trace_confidence(confidences, "bottom10") < 2.0
    assert trace_confidence([3.0, 5.0], "lowest_group") == pytest.approx(4.0)  # shorter than a window: one group
    with pytest.raises(ValueError, match="unknown confidence measure"):
        trace_confidence([1.0], "vibes")


def test_the_running_group_agrees_with_the_offline_one():
    values = list(np.random.default_rng(1).uniform(0, 8, 60))
    running = RunningGroup(window=16)
    online = [g for g in (running.push(v) for v in values) if g is not None]
    assert online == pytest.approx(list(group_confidences(values, 16)))
    assert running.lowest == pytest.approx(min(online))


def test_certainty_and_threshold():
    assert certainty([math.log(0.5)] * 4) == pytest.approx(0.5)
    assert certainty([]) == 1.0
    warm = [[5.0] * 20, [3.0] * 20]
    assert stop_threshold(warm, keep=1.0) == pytest.approx(3.0)
    assert 3.0 < stop_threshold(warm, keep=0.5) < 5.0
