from fractions import Fraction

import pytest

from mimo_core.answers import extract_answer, extract_code, extract_esi, extract_number


@pytest.mark.parametrize(
    "text, value",
    [
        ("96", 96),
        ("96.0", 96),
        ("1,234", 1234),
        ("#### 96", 96),
        ("The answer is $96.", 96),
        ("She pays $1,234.50 in total.", Fraction("1234.5")),
        ("The temperature drops to -7 degrees.", -7),
        ("The answer is -12", -12),
        ("Half of it: 3/4 of a cup", Fraction(3, 4)),
        ("0.25", Fraction(1, 4)),
        ("First 12 * 8 = 96, then 96 - 6 = 90. #### 90", 90),
        ("We get 5 and then 7.\nAnswer: 42", 42),
        ("10-5 leaves 5", 5),
        (r"so \boxed{18} apples", 18),
        ("The answer is 7 because 3 + 4 = 7, not 8", 7),
    ],
)
def test_numbers_by_value(text, value):
    assert extract_number(text) == value


@pytest.mark.parametrize("text", ["", None, "no digits here", "$", "-"])
def test_no_number(text):
    assert extract_number(text) is None


def test_numbers_vote_together():
    spellings = ["96", "96.0", "$96", "#### 96", "The answer is 96."]
    assert {extract_answer("math", s) for s in spellings} == {"96"}
    assert extract_answer("math", "0.75") == extract_answer("math", "3/4") == "3/4"


def test_last_python_block_wins():
    text = "Try:\n```python\ndef f():\n    return 1\n```\nBetter:\n```python\ndef f():\n    return 2\n```\n"
    assert extract_code(text) == "def f():\n    return 2\n"


def test_python_block_preferred_over_other_languages():
    text = "```python\nx = 1\n```\n```bash\nrm -rf /\n```"
    assert extract_code(text) == "x = 1\n"


def test_unlabelled_block_and_bare_code():
    assert extract_code("```\ndef g(): return 3\n```") == "def g(): return 3\n"
    assert extract_code("def g(x):\n    return x + 1") == "def g(x):\n    return x + 1\n"
    assert extract_code("    return sorted(xs)\n") == "    return sorted(xs)\n"


@pytest.mark.parametrize("text", [None, "", "I think the function should sort the list."])
def test_no_code(text):
    assert extract_code(text) is None


@pytest.mark.parametrize(
    "text, level",
    [
        ("ESI 2", 2),
        ("Level: 3", 3),
        ("ESI level 2", 2),
        ("esi-4", 4),
        ("Not ESI 1: she is alert. Final: ESI 2.", 2),
        ("Triage level 5", 5),
        ("3", 3),
    ],
)
def test_esi_levels(text, level):
    assert extract_esi(text) == level


@pytest.mark.parametrize("text", [None, "", "ESI 7", "urgent", "pain 8/10", "12"])
def test_no_esi_level(text):
    assert extract_esi(text) is None


def test_general_answer_line():
    assert extract_answer("general", "Thinking...\nAnswer: Paris") == "Paris"
    assert extract_answer("general", "  Paris  ") == "Paris"
    assert extract_answer("general", "   ") is None
