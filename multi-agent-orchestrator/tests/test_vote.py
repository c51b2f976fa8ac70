"""Normalisation per domain, weights, the tally and its ties, the stop rules, and the replay of early stop."""

import math

import pytest

from multi_agent_orchestrator.options import Options
from multi_agent_orchestrator.replay import Signal, replay
from multi_agent_orchestrator.vote import (
    answer_of, cast, decided, normalise_code, tally, weights, window_agrees,
)


def test_answers_are_normalised_per_domain():
    assert answer_of("math", "so 12 * 8 = 96.\nThe answer is $96.00.") == ("96", "96")
    assert answer_of("math", "The answer is 1,000.")[1] == answer_of("math", "#### 1000")[1]
    assert answer_of("math", "no number here") == (None, None)
    assert answer_of("triage", "Vitals are unstable.\nESI level: 2") == ("2", "2")
    assert answer_of("general", "Answer:  Paris.")[1] == answer_of("general", "answer: paris")[1]
    a = answer_of("coding", "```python\ndef f(x):\n    # double it\n    return 2 * x\n```")
    b = answer_of("coding", "```python\ndef f(x):\n\n    return 2 * x   \n```")
    assert a[1] == b[1] and a[1].startswith("text:")
    assert normalise_code("x = 1  # set\n\n\ny = 2\n") == "x = 1\ny = 2"


def test_weights():
    assert weights([1.0, 5.0], "unweighted") == [1.0, 1.0]
    cisc = weights([1.0, 2.0], "cisc", temperature=1.0)
    assert cisc == pytest.approx([math.exp(-1), 1.0])
    assert weights([1.0, 2.0, 4.0, 8.0], "deepconf", keep=0.5) == pytest.approx([0.0, 0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="unknown weighting"):
        weights([1.0], "loudest")


def test_the_tally_and_its_ties():
    plain = tally(["7", "9", "7", None], [1, 1, 1, 1])
    assert plain.winner == "7" and plain.share == pytest.approx(0.5)  # the unparsed answer still counts in the total
    # equal totals: the heaviest single vote wins
    assert tally(["a", "a", "b"], [0.5, 0.5, 1.0]).winner == "b"
    # equal totals and equal heaviest votes: the first seen wins, whatever the order of the rest
    assert tally(["x", "y"], [1.0, 1.0]).winner == "x"
    assert tally(["y", "x"], [1.0, 1.0]).winner == "y"
    assert tally([None, None], [1.0, 1.0]).winner is None


def test_doubt_keeps_a_lone_voter_from_full_confidence():
    assert tally(["5"], [1.0], [0.4]).share == pytest.approx(0.4)
    assert tally(["5", "5"], [1.0, 1.0], [0.9, 0.5]).share == pytest.approx(0.7)


def test_the_vote_weighs_measured_confidence_not_what_the_text_says():
    sure, unsure = [8.0] * 20, [1.0] * 20
    options = Options(weighting="cisc", measure="mean", temperature=1.0, doubt=False)
    vote, w = cast(["a", "b", "b"], [sure, unsure, unsure], [[0.0] * 20] * 3, options)
    assert vote.winner == "a" and w[0] == 1.0
    majority, _ = cast(["a", "b", "b"], [sure, unsure, unsure], [[0.0] * 20] * 3,
                       Options(weighting="unweighted", doubt=False))
    assert majority.winner == "b"
    spec, _ = cast(["a"], [sure], [[0.0] * 20], options, verified=("b", 1.0))
    assert spec.votes == {"a": 1.0, "b": 1.0}


def test_stop_rules():
    assert decided({"7": 3.0, "9": 1.0}, running=1)
    assert not decided({"7": 3.0, "9": 1.0}, running=2)
    assert not decided({}, running=0)
    assert window_agrees(["1", "7", "7", "7"], 3) and not window_agrees(["7", "1", "7"], 3)
    assert not window_agrees([None, None], 2) and not window_agrees(["7"], 0)


def _signal(key, length, confidence=5.0):
    return Signal(key, [confidence] * length, [-0.1] * length)


def test_replay_cuts_the_vote_once_it_is_decided():
    signals = [_signal("7", 10), _signal("7", 12), _signal("7", 14), _signal("9", 50), _signal("9", 60)]
    options = Options(weighting="unweighted", doubt=False, early_stop=True, warmup=2)
    result = replay(signals, options)
    # after three "7"s, two running traces cannot overtake: they are cut at step 14
    assert result.tally.winner == "7" and result.steps == 14
    assert result.statuses == ["done", "done", "done", "cancelled", "cancelled"]
    assert result.tokens == 10 + 12 + 14 + 14 + 14 and result.full_tokens == 146
    off = replay(signals, Options(weighting="unweighted", doubt=False, early_stop=False))
    assert off.tokens == off.full_tokens == 146 and off.statuses == ["done"] * 5


def test_replay_stops_a_trace_whose_confidence_falls_below_the_warmup_threshold():
    falling = Signal("1", [6.0] * 30 + [0.5] * 30, [-0.1] * 60)
    signals = [_signal("3", 20, 6.0), _signal("4", 22, 6.0), falling]
    result = replay(signals, Options(weighting="unweighted", doubt=False, early_stop=True, warmup=2, keep=0.9))
    assert result.statuses[2] == "stopped" and result.tokens < result.full_tokens
    assert "1" not in result.tally.votes
