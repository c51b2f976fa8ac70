"""The score token read from top logprobs: probability-weighted, robust to hostile alternatives."""

import math

import pytest

from spec_reasoner.scoring import accepted_prefix, digit_score


def test_probability_weighted_digit():
    score, mass = digit_score({"9": math.log(0.5), "7": math.log(0.25), " 7": math.log(0.15), "The": math.log(0.1)})
    assert mass == pytest.approx(0.9)
    assert score == pytest.approx((9 * 0.5 + 7 * 0.4) / 0.9)


def test_no_digit_is_no_score():
    assert digit_score({"The": -0.1, "Yes": -2.0}) == (None, 0.0)
    assert digit_score({}) == (None, 0.0)


def test_hostile_alternatives_are_ignored():
    # multi-digit tokens, words with digits, non-finite logprobs and None are not scores
    top = {"10": -0.1, "7a": -0.2, "９": -0.3, "8": float("nan"), "6": float("-inf"), "5": None, "3": math.log(0.5)}
    assert digit_score(top) == (pytest.approx(3.0), pytest.approx(0.5))


def test_longest_accepted_prefix():
    assert accepted_prefix([8.0, 7.0, 6.9, 9.0], 7.0) == 2
    assert accepted_prefix([9.0, 9.0], 7.0) == 2
    assert accepted_prefix([6.0, 9.0], 7.0) == 0
    assert accepted_prefix([9.0, None, 9.0], 5.0) == 1
    assert accepted_prefix([], 7.0) == 0
