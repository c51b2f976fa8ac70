"""D/s on a hand-computed example, under the design formula and the proposal's printed snippet."""

import pytest

from ds_benchmark.results import Outcome
from ds_benchmark.score import figures, record_score

# (difficulty, correct, confidence)
EXAMPLE = [(3.0, True, 0.9), (2.0, False, 0.95), (1.0, False, 0.5), (1.0, True, None)]


def outcomes(formula):
    return [Outcome(id=f"t{i}", domain="math", difficulty=d, correct=c, confidence=p,
                    score=record_score(c, p, formula), overconfident_wrong=not c and (p or 0) > 0.8, latency_s=1.0 + i,
                    prompt_tokens=10, completion_tokens=5, error=None, detail="")
            for i, (d, c, p) in enumerate(EXAMPLE)]


def test_record_scores():
    assert [record_score(c, p, "design") for _, c, p in EXAMPLE] == [1.0, -1.0, 0.0, 1.0]
    # The seed's penalty term is multiplied by `correct`, so the confident wrong answer scores 0, not -1.
    assert [record_score(c, p, "seed") for _, c, p in EXAMPLE] == [1.0, 0.0, 0.0, 1.0]
    assert record_score(False, 0.8, "design") == 0.0  # "above 0.8" is strict
    with pytest.raises(ValueError):
        record_score(True, 1.0, "other")


def test_hand_computed_ds():
    # design: (3*1 + 2*(-1) + 1*0 + 1*1) / 10 s = 0.2;  seed: (3*1 + 2*0 + 1*0 + 1*1) / 10 s = 0.4
    design, seed = figures(outcomes("design"), wall_s=10.0), figures(outcomes("seed"), wall_s=10.0)
    assert design.ds == pytest.approx(0.2) and seed.ds == pytest.approx(0.4)
    assert design.accuracy == 0.5 and design.correct == 2
    assert design.weighted_accuracy == pytest.approx(4 / 7, abs=1e-6)
    assert design.overconfident_wrong == 1
    assert design.completion_tokens == 20 and design.tokens_per_s == pytest.approx(2.0)
    assert design.latency_s["p50"] == pytest.approx(2.5)


def test_bootstrap_intervals_are_seeded_and_contain_the_estimate():
    a, b = figures(outcomes("design"), 10.0, seed=3), figures(outcomes("design"), 10.0, seed=3)
    assert a.ds_ci95 == b.ds_ci95 and a.accuracy_ci95 == b.accuracy_ci95
    assert a.ds_ci95[0] <= a.ds <= a.ds_ci95[1]
    assert a.accuracy_ci95[0] <= a.accuracy <= a.accuracy_ci95[1]


def test_no_outcomes():
    empty = figures([], wall_s=1.0)
    assert empty.n == 0 and empty.ds == 0.0 and empty.accuracy is None and empty.ds_ci95 is None
