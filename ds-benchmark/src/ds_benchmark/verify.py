"""The verifiers behind `score`: each domain's answer checked against the record's reference, never by a model."""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from mimo_core.answers import canonical_number, extract_answer, extract_code, extract_esi, extract_number
from mimo_core.record import TaskRecord
from mimo_core.stage import run_stage

from .sandbox import Limits, SandboxUnavailable, run_python
from .score import is_confident, record_score

STAGE = "ds-benchmark"
CODE_LIMITS = Limits()

Check = tuple[bool, str, dict[str, Any]]  # correct, detail, extra verdict fields


def _need(reference: dict, *keys: str) -> None:
    missing = [k for k in keys if k not in reference]
    if missing:
        raise ValueError(f"the reference has no {', '.join(missing)}")


def check_math(answer: str, reference: dict) -> Check:
    """Right when the answer's final number equals the reference by value (96 == 96.0 == $96)."""
    _need(reference, "answer")
    expected = Fraction(str(reference["answer"]).replace(",", ""))
    got = extract_number(answer)
    if got is None:
        return False, "no number in the answer", {"expected": canonical_number(expected), "got": None}
    detail = "equal" if got == expected else f"expected {canonical_number(expected)}, got {canonical_number(got)}"
    return got == expected, detail, {"expected": canonical_number(expected), "got": canonical_number(got)}


def check_triage(answer: str, reference: dict) -> Check:
    """Right when the answer's ESI level equals the level the ESI algorithm gives."""
    _need(reference, "level")
    expected, got = int(reference["level"]), extract_esi(answer)
    if got is None:
        return False, "no ESI level (1-5) in the answer", {"expected": expected, "got": None}
    detail = "equal" if got == expected else f"expected ESI {expected}, got ESI {got}"
    return got == expected, detail, {"expected": expected, "got": got}


def program(code: str, reference: dict) -> str:
    """The program to run: the prompt (imports, helpers, the signature), the code, the tests, the check call.

    The code may be a whole function, which redefines the prompt's stub, or just its body, which completes it."""
    _need(reference, "prompt", "tests", "entry_point")
    return f"{reference['prompt']}\n{code}\n\n{reference['tests']}\n\ncheck({reference['entry_point']})\n"


def check_coding(answer: str, reference: dict) -> Check:
    """Right when the extracted code passes the problem's tests inside the sandbox."""
    code = extract_code(answer)
    if code is None:
        return False, "no code in the answer", {}
    source = program(code, reference)
    try:
        result = run_python(source, CODE_LIMITS)
    except SandboxUnavailable as exc:
        return False, f"not run: {exc}", {"isolation": None}
    detail = result.status if result.status != "failed" else f"failed: {_last_line(result.output)}"
    return result.status == "passed", detail, {"isolation": result.isolation, "run_wall_s": result.wall_s}


def check_general(answer: str, reference: dict) -> Check:
    """Right when the answer equals the reference answer, ignoring case, spacing and end punctuation."""
    _need(reference, "answer")
    expected, got = _normal(str(reference["answer"])), _normal(extract_answer("general", answer) or "")
    return got == expected, "equal" if got == expected else f"expected {expected!r}, got {got!r}", {}


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip(".!").casefold()


def _last_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else "no output"


VERIFIERS: dict[str, Callable[[str, dict], Check]] = {
    "math": check_math,
    "coding": check_coding,
    "triage": check_triage,
    "general": check_general,
}


def verdict(record: TaskRecord, formula: str = "design") -> dict[str, Any]:
    """The record's verdict: correct, confidence, difficulty, score, overconfident_wrong, detail (and checker extras).

    A record with no answer or no usable reference is scored wrong, with the reason in `detail`."""
    confidence = record.consensus.get("confidence")
    confidence = float(confidence) if isinstance(confidence, (int, float)) else None
    answer = record.answer
    extra: dict[str, Any] = {}
    if answer is None or not str(answer).strip():
        correct, detail = False, "no answer (consensus.answer is missing)"
        if record.error:
            detail += f"; the record's error: {record.error}"
    elif not record.reference:
        correct, detail = False, "no reference to check against"
    else:
        try:
            correct, detail, extra = VERIFIERS[record.domain](str(answer), record.reference)
        except (ValueError, TypeError, ZeroDivisionError) as exc:
            correct, detail = False, f"cannot check: {exc}"
    return {
        "correct": correct,
        "confidence": confidence,
        "difficulty": record.difficulty,
        "score": record_score(correct, confidence, formula),
        "overconfident_wrong": not correct and is_confident(confidence),
        "detail": detail,
        **extra,
    }


def score_record(record: TaskRecord, ctx: object = None) -> None:
    """The `score` stage's work on one record: write its verdict."""
    record.verdict = verdict(record)


def score_stream(**kwargs: Any) -> int:
    """`ds-benchmark score`: records in, records with `verdict` out; the exit code (2 on bad input)."""
    return run_stage(STAGE, score_record, **kwargs)
