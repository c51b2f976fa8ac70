"""Math word problems: GSM8K's test set (the default; shipped as package data, MIT licence, see data/), or our
templates, a chain of 1-5 operations told as a short story, for a difficulty under control. Difficulty: see
STEP_BOUNDS.

Any file in GSM8K's JSONL format (`question`, `answer`: the solution, a step per line, ending in `#### N`) works."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

from mimo_core.answers import canonical_number, parse_number

from ..difficulty import Item, Measure, level

NAMES = (("Ava", "she"), ("Ben", "he"), ("Chloe", "she"), ("Diego", "he"), ("Emma", "she"), ("Farid", "he"),
         ("Grace", "she"), ("Hiro", "he"), ("Ines", "she"), ("Jonas", "he"), ("Keiko", "she"), ("Liam", "he"))
# (things, the verb of getting more, the verb of losing some)
THINGS = (("marbles", "wins", "loses"), ("stickers", "buys", "gives away"), ("books", "buys", "donates"),
          ("stamps", "is given", "trades away"), ("dollars", "earns", "spends"), ("seashells", "finds", "drops"),
          ("trading cards", "gets", "sells"), ("apples", "picks", "eats"), ("pencils", "buys", "lends out"))
TIMES = {2: "twice", 3: "three times", 4: "four times", 5: "five times"}
PARTS = {2: "half", 3: "a third", 4: "a quarter", 5: "a fifth"}
MAX_VALUE = 10_000
GSM8K = Path(__file__).parent / "data" / "gsm8k_test.jsonl"
# Difficulty (1..5) from the solution's steps: the largest step count of levels 1 to 4. Each step is one more
# intermediate quantity to find and hold. One or two steps is level 1 (read, compute, perhaps once more); every
# further step is a level up to 5 steps; 6 or more (11 at most in GSM8K, 150 of its 1,319 problems) are level 5, too
# few apart to rank further. GSM8K's test set then spreads 326 / 371 / 297 / 175 / 150 over levels 1..5. A template
# operation is one step, so templates (1-5 operations) take levels 1..4.
STEP_BOUNDS = (2, 3, 4, 5)


def _problem(ops: int, rng: random.Random) -> tuple[str, int]:
    """A story of `ops` operations and its answer."""
    people = rng.sample(NAMES, len(NAMES))
    things, gain, lose = rng.choice(THINGS)
    name, he = people.pop()
    value = rng.randint(10, 99)
    sentences = [f"{name} has {value} {things}."]
    for _ in range(ops):
        # Multiplying and dividing hand the count to a new person, which keeps every sentence natural.
        choices = ["add"]
        if value > 2:
            choices.append("sub")
        if value * 2 <= MAX_VALUE:
            choices.append("mul")
        if any(value % d == 0 for d in PARTS):
            choices.append("div")
        op = rng.choice(choices)
        if op == "add":
            amount = rng.randint(5, 60)
            value += amount
            sentences.append(f"Then {he} {gain} {amount} more.")
        elif op == "sub":
            amount = rng.randint(1, min(value - 1, 60))
            value -= amount
            sentences.append(f"{he.capitalize()} {lose} {amount} of them.")
        else:
            other, other_he = people.pop()
            if op == "mul":
                factor = rng.choice([f for f in TIMES if value * f <= MAX_VALUE])
                value *= factor
                sentences.append(f"{other} has {TIMES[factor]} as many {things} as {name}.")
            else:
                divisor = rng.choice([d for d in PARTS if value % d == 0])
                value //= divisor
                sentences.append(f"{other} has {PARTS[divisor]} as many {things} as {name}.")
            name, he = other, other_he
    sentences.append(f"How many {things} does {name} have now?")
    return " ".join(sentences), value


def difficulty(steps: int) -> float:
    """The level (1..5) of a solution of `steps` steps (see STEP_BOUNDS)."""
    return level(steps, STEP_BOUNDS)


def generate(n: int, rng: random.Random) -> Iterator[Item]:
    """`n` template problems of 1-5 operations, drawn uniformly; each operation is a solution step."""
    for _ in range(n):
        ops = rng.randint(1, 5)
        task, answer = _problem(ops, rng)
        yield Item(task, {"answer": str(answer)}, difficulty(ops), Measure("operations", ops))


def solution_steps(solution: str) -> int:
    """The steps of a GSM8K solution: its lines before `####`, or its <<calculator>> annotations if more."""
    work = solution.rsplit("####", 1)[0]
    lines = sum(1 for line in work.splitlines() if line.strip())
    return max(lines, work.count("<<"), 1)


def read_gsm8k(path: Path = GSM8K) -> list[tuple[str, str, str]]:
    """(question, solution, the answer after `####` as written) of every row of a GSM8K JSONL file."""
    rows = []
    with open(path, encoding="utf-8") as stream:
        for line_no, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                final = row["answer"].rsplit("####", 1)[1].strip()
            except (json.JSONDecodeError, KeyError, IndexError, AttributeError, TypeError):
                raise ValueError(f"{path}: line {line_no}: not a GSM8K row (question, answer ending in '#### N')") \
                    from None
            if parse_number(final) is None:
                raise ValueError(f"{path}: line {line_no}: no number after '####'")
            rows.append((row["question"], row["answer"], final))
    return rows


def generate_gsm8k(n: int, rng: random.Random, path: Path = GSM8K) -> Iterator[Item]:
    """`n` distinct problems sampled from GSM8K; the difficulty comes from the reference solution's steps."""
    rows = read_gsm8k(path)
    if n > len(rows):
        raise ValueError(f"{path.name} has {len(rows)} problems; {n} math tasks were asked for")
    for question, solution, final in rng.sample(rows, n):
        answer = canonical_number(parse_number(final))  # type: ignore[arg-type]
        steps = solution_steps(solution)
        yield Item(question, {"answer": answer}, difficulty(steps), Measure("solution_steps", steps))
