"""benchmarks/accuracy.py's figures and verdicts from known log-probabilities (no model, no llama.cpp)."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def accuracy(benchmark_script):
    return benchmark_script("accuracy")


def test_heldout_windows_cover_every_token_once(accuracy):
    assert accuracy.windows(list(range(10)), 4) == {"heldout[0]": [0, 1, 2, 3], "heldout[1]": [4, 5, 6, 7],
                                                    "heldout[2]": [8, 9]}


def _logprobs(perplexity: float, shift: float = 0.0) -> dict[str, np.ndarray]:
    """Two prompts and a held-out window of 4 token log-probabilities each; the prompts' second token moved by shift."""
    return {"a": np.log([0.5, 0.25 * np.exp(shift), 0.5, 0.5]), "b": np.log([0.2, 0.2 * np.exp(shift), 0.2, 0.2]),
            "heldout[0]": np.full(4, -np.log(perplexity))}


def test_report_measures_against_float32_and_judges(accuracy):
    f32 = _logprobs(10.0)
    report = accuracy.model_report(["a", "b"], ["heldout[0]"], f32, _logprobs(10.04, 0.01), _logprobs(10.2, -0.03))
    assert report["prompt_positions"] == 8 and report["heldout_positions"] == 4
    assert report["logprob_abs_difference"]["default"] == pytest.approx({"max": 0.01, "mean": 0.01 * 2 / 8})
    assert report["logprob_abs_difference"]["llama.cpp"] == pytest.approx({"max": 0.03, "mean": 0.03 * 2 / 8})
    assert report["perplexity"] == pytest.approx({"f32": 10.0, "default": 10.04, "llama.cpp": 10.2})
    assert report["perplexity_relative_difference"] == pytest.approx({"default": 0.004, "llama.cpp": 0.02})
    assert report["verdicts"] == {"default_no_further_than_llama_cpp": True,
                                  "default_perplexity_within_tolerance": True}


def test_verdicts_fail_past_llama_cpp_or_past_half_a_percent(accuracy):
    f32 = _logprobs(10.0)
    report = accuracy.model_report(["a", "b"], ["heldout[0]"], f32, _logprobs(10.06, 0.02), _logprobs(10.0, 0.01))
    assert report["verdicts"] == {"default_no_further_than_llama_cpp": False,
                                  "default_perplexity_within_tolerance": False}


def test_a_larger_mean_alone_is_further_than_llama_cpp(accuracy):
    f32 = _logprobs(10.0)
    spread = {**f32, "a": f32["a"] + 0.01, "b": f32["b"] + 0.01}  # every position 0.01 off: max 0.01, mean 0.01
    one_spike = {**f32, "a": f32["a"] + np.array([0, 0.02, 0, 0])}  # max 0.02, mean 0.0025
    report = accuracy.model_report(["a", "b"], ["heldout[0]"], f32, spread, one_spike)
    assert report["verdicts"]["default_no_further_than_llama_cpp"] is False
