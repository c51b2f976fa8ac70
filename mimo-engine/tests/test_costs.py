"""What steps cost, measured from plain step timings: no model runs."""

import pytest

from mimo_engine.costs import StepCosts, StepTiming, attended

DECODE_S, TOKEN_S, POSITION_S = 0.025, 0.003, 0.0000015  # like smollm2-135m's beside one stream on this machine


def step(tokens: int, position: int, scale: float = 1.0) -> StepTiming:
    """A step of one decode token and a chunk, timed as the line says (times `scale`)."""
    seconds = DECODE_S + scale * (TOKEN_S * tokens + POSITION_S * attended(tokens, position))
    return StepTiming(decode_tokens=1, chunks=((tokens, position),), seconds=seconds)


def decoded() -> StepCosts:
    """Costs that have seen a few decode-only steps of one token."""
    costs = StepCosts()
    for _ in range(3):
        costs.observe(StepTiming(1, (), DECODE_S))
    return costs


def test_a_chunk_attends_to_every_earlier_position_and_its_own():
    assert attended(1, 0) == 1 and attended(3, 10) == 11 + 12 + 13


def test_a_decode_step_costs_the_median_of_its_token_count_or_of_the_nearest_measured():
    costs = StepCosts()
    assert costs.decode_s(1) == 0.0 and costs.chunk_cost(1) is None
    for seconds in (0.02, 0.5, 0.03):  # one slowed by other work
        costs.observe(StepTiming(1, (), seconds))
    costs.observe(StepTiming(8, (), 0.06))
    assert costs.decode_s(1) == 0.03 and costs.decode_s(2) == 0.03 and costs.decode_s(6) == 0.06
    assert costs.decode_s(0) == 0.0


def test_the_line_is_read_from_steps_along_a_long_prompt():
    costs = decoded()
    assert costs.line() is None
    for position in range(0, 1500, 100):
        costs.observe(step(100, position))
    cost = costs.chunk_cost(1)
    assert cost.decode_s == DECODE_S
    assert cost.token_s == pytest.approx(TOKEN_S, rel=1e-6) and cost.position_s == pytest.approx(POSITION_S, rel=1e-6)


def test_one_slow_step_does_not_move_the_line():
    costs = decoded()
    for position in range(0, 1000, 100):
        costs.observe(step(100, position))
    costs.observe(StepTiming(1, ((100, 1000),), 1.9))  # a kernel compiled on its first call
    costs.observe(step(100, 1100))
    token_s, position_s = costs.line()
    assert token_s == pytest.approx(TOKEN_S, rel=1e-6) and position_s == pytest.approx(POSITION_S, rel=1e-6)


def test_the_level_follows_the_latest_steps():
    costs = decoded()
    for position in range(0, 1000, 100):
        costs.observe(step(100, position))
    for position in range(1000, 1300, 100):  # other work takes a core: every step now takes twice as long
        costs.observe(step(100, position, scale=2.0))
    cost = costs.chunk_cost(1)
    assert cost.position_s == pytest.approx(POSITION_S, rel=0.5)
    expected = 2 * (TOKEN_S * 100 + POSITION_S * attended(100, 1300))
    assert cost.seconds(100, 1300) == pytest.approx(expected, rel=0.05)


def test_steps_close_together_give_no_slope():
    costs = decoded()
    costs.observe(step(40, 0))
    costs.observe(StepTiming(1, ((40, 10),), 0.5))  # 10 positions on, and slowed: no slope of 1 ms a position
    assert costs.line()[1] == 0.0


def test_a_step_faster_than_its_decode_tokens_costs_nothing_rather_than_less():
    costs = decoded()
    costs.observe(StepTiming(1, ((20, 0),), 0.01))
    assert costs.line() == (0.0, 0.0)
