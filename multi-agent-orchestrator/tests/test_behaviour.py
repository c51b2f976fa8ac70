"""Code answers compared by what they do on the task's own examples, run in ds-benchmark's sandbox."""

import pytest

from multi_agent_orchestrator.behaviour import SandboxMissing, behaviour_keys, entry_point, examples

TASK = '''from typing import List


def twice(xs: List[int]) -> List[int]:
    """Double every number.
    >>> twice([1, 2])
    [2, 4]
    twice([]) == []
    twice([0, -3]) ➞ [0, -6]
    """
'''


def test_examples_come_from_the_docstring_not_the_signature():
    assert entry_point(TASK) == "twice"
    assert examples(TASK) == ["twice([1, 2])", "twice([])", "twice([0, -3])"]
    assert examples("def f(x):\n    return x\n") == []
    assert examples("no function at all") == []


def test_programs_that_behave_alike_vote_alike():
    same_a = "def twice(xs):\n    return [2 * x for x in xs]\n"
    same_b = "def twice(xs):\n    out = []\n    for x in xs:\n        out.append(x + x)\n    return out\n"
    other = "def twice(xs):\n    return xs\n"
    broken = "def twice(xs:\n"
    liar = "def twice(xs):\n    print('@@behaviour-0000@@[\"[2, 4]\", \"[]\", \"[0, -6]\"]')\n    return xs\n"
    try:
        keys = behaviour_keys(TASK, [same_a, same_b, other, broken, liar])
    except SandboxMissing as exc:
        pytest.skip(f"no sandbox here: {exc}")
    assert keys[same_a] == keys[same_b] is not None
    assert keys[other] not in (None, keys[same_a])
    assert keys[broken] is None  # a program that does not run has no answer
    assert keys[liar] != keys[same_a]  # the marker is drawn after the code was written
