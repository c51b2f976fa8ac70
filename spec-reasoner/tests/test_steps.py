"""Step splitting, joining, and the final-answer line that ends a chain."""

import pytest

from spec_reasoner.steps import continuation, final_answer, first_step, join_steps, split_steps


def test_split_on_blank_lines_and_strip():
    text = "  First, add.\n\n\n49 + 30 = 79\nstill step two\n\n \n\nThe answer is 79.\n"
    assert split_steps(text) == ["First, add.", "49 + 30 = 79\nstill step two", "The answer is 79."]
    assert split_steps("") == [] and split_steps("\n\n  \n\n") == []


def test_join_and_continue_round_trip():
    steps = ["a", "b\nc"]
    assert split_steps(join_steps(steps)) == steps
    assert continuation(steps) == "a\n\nb\nc\n\n" and continuation([]) == ""
    assert join_steps(["x", "y"], "\n") == "x\ny"


def test_first_step_when_the_server_ignored_the_stop():
    assert first_step("step one\n\nstep two") == "step one"
    assert first_step("\n\n") == ""


@pytest.mark.parametrize("domain,text,answer", [
    ("math", "49 + 30 = 79\n\nThe answer is 79.", "79"),
    ("math", "So \\boxed{12}", "12"),
    ("math", "49 + 30 = 79", None),  # a number, but not the final line
    ("triage", "Vital signs are stable.\n\nESI level: 3", "3"),
    ("triage", "Using ESI v4, levels 1-5, ...", None),
    ("coding", "```python\ndef f():\n    return 1\n```", "def f():\n    return 1\n"),
    ("coding", "```python\ndef f():", None),  # the block is not closed yet
    ("general", "Paris is the capital.\nAnswer: Paris", "Paris"),
])
def test_final_answer(domain, text, answer):
    assert final_answer(domain, text) == answer
