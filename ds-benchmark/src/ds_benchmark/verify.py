"""The verifiers behind `score`: each domain's answer checked against the record's reference, never by a model."""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from mimo_core.answers import canonical_number, extract_answer, extract_code, extract_esi, extract_number
from mimo_core.contract import Contract
from mimo_core.record import TaskRecord
from mimo_core.stage import run_stage

from .sandbox import EXIT_NO_SANDBOX, Limits, SandboxUnavailable, require_sandbox, run_check
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


def candidate_source(code: str, reference: dict) -> str:
    """The candidate's program: the prompt (imports, helpers, the signature), then the code, which may be a whole
    function (redefining the prompt's stub) or just its body (completing it)."""
    _need(reference, "prompt", "tests", "entry_point")
    return f"{reference['prompt']}\n{code}\n"


def check_coding(answer: str, reference: dict) -> Check:
    """Right when the extracted function passes the problem's tests, proven by the sandbox's checker; raises
    SandboxUnavailable when no sandbox works here (the answer is then not checked at all)."""
    code = extract_code(answer)
    if code is None:
        return False, "no code in the answer", {}
    source = candidate_source(code, reference)
    require_sandbox()
    result = run_check(source, reference["prompt"], reference["tests"], reference["entry_point"], CODE_LIMITS)
    detail = result.detail if result.status != "failed" else f"failed: {result.detail}"
    return result.status == "passed", detail, {"isolation": result.isolation, "run_wall_s": result.wall_s}


def check_general(answer: str, reference: dict) -> Check:
    """Right when the answer equals the reference answer, ignoring case, spacing and end punctuation."""
    _need(reference, "answer")
    expected, got = _normal(str(reference["answer"])), _normal(extract_answer("general", answer) or "")
    return got == expected, "equal" if got == expected else f"expected {expected!r}, got {got!r}", {}


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip(".!").casefold()


VERIFIERS: dict[str, Callable[[str, dict], Check]] = {
    "math": check_math,
    "coding": check_coding,
    "triage": check_triage,
    "general": check_general,
}


NO_REFERENCE = "not scored: the record has no reference"


@dataclass
class Verdict(Contract):
    """A record's `verdict` section; a checker's own findings (expected, got, isolation, ...) ride along in `extra`."""

    EXTRA = "keep"

    correct: bool | None  # None: the answer could not be checked (no sandbox); it scores 0 and is an error
    confidence: float | None
    difficulty: float
    score: float
    overconfident_wrong: bool
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)


def verdict(record: TaskRecord, formula: str = "design") -> Verdict:
    """The record's verdict: correct, confidence, difficulty, score, overconfident_wrong, detail (and checker extras).

    A record with no answer is scored wrong, with the reason in `detail`. A record with no reference (a user's own
    task) is not scored, and a coding answer that cannot be run because no sandbox works here is neither right nor
    wrong: both have `correct` None and score 0, and `detail` says which."""
    confidence = record.consensus.get("confidence")
    confidence = float(confidence) if isinstance(confidence, (int, float)) else None
    answer = record.answer
    extra: dict[str, Any] = {}
    correct: bool | None
    if answer is None or not str(answer).strip():
        correct, detail = False, "no answer (consensus.answer is missing)"
        if record.error:
            detail += f"; the record's error: {record.error}"
    elif not record.reference:
        correct, detail = None, NO_REFERENCE
    else:
        try:
            correct, detail, extra = VERIFIERS[record.domain](str(answer), record.reference)
        except (ValueError, TypeError, ZeroDivisionError) as exc:
            correct, detail = False, f"cannot check: {exc}"
        except SandboxUnavailable as exc:
            correct, detail, extra = None, f"not run: {exc}", {"isolation": None}
    return Verdict(
        correct=correct,
        confidence=confidence,
        difficulty=record.difficulty,
        score=0.0 if correct is None else record_score(correct, confidence, formula),
        overconfident_wrong=correct is False and is_confident(confidence),
        detail=detail,
        extra=extra,
    )


def score_record(record: TaskRecord, ctx: object = None) -> None:
    """The `score` stage's work on one record: write its verdict. A verdict of not run (`correct: null`) also raises
    SandboxUnavailable, so that the stage sets the record's `error` and marks its trace entry as an error."""
    checked = verdict(record)
    record.verdict = checked.to_dict()
    if checked.correct is None and checked.detail != NO_REFERENCE:
        raise SandboxUnavailable(checked.detail)


@dataclass
class Tally:
    """What `score` did, for its summary line; counted from the stage's worker threads."""

    records: int = 0
    correct: int = 0
    wrong: int = 0
    not_run: int = 0
    unscored: int = 0
    errors: int = 0
    no_sandbox: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, record: TaskRecord) -> None:
        """Count one scored record."""
        correct = record.verdict.get("correct")
        with self._lock:
            self.records += 1
            self.correct += correct is True
            self.wrong += correct is False
            unscored = record.verdict.get("detail") == NO_REFERENCE
            self.unscored += unscored
            not_run = correct is None and not unscored
            self.not_run += not_run
            self.errors += record.error is not None or not_run  # the stage sets a not-run record's error after this

    def sandbox_missing(self) -> bool:
        """Note that a record could not be run for want of a sandbox; True the first time."""
        with self._lock:
            first, self.no_sandbox = not self.no_sandbox, True
            return first

    def summary(self) -> str:
        """One line: records, correct, wrong, not run, errors (and records with no reference, when there are)."""
        unscored = f", {self.unscored} with no reference (not scored)" if self.unscored else ""
        return (f"{self.records} records: {self.correct} correct, {self.wrong} wrong, {self.not_run} not run, "
                f"{self.errors} errors{unscored}")


def score_stream(**kwargs: Any) -> tuple[int, Tally]:
    """`ds-benchmark score`: records in, records with `verdict` out; the exit code (2 on bad input, EXIT_NO_SANDBOX
    when coding records could not be run, said once on stderr) and the tally."""
    tally = Tally()

    def score_and_count(record: TaskRecord, ctx: object) -> None:
        try:
            score_record(record, ctx)
        except SandboxUnavailable as exc:
            if tally.sandbox_missing():
                print(f"score: {exc}; coding records get correct: null and an error", file=sys.stderr)
            raise
        finally:
            tally.count(record)

    code = run_stage(STAGE, score_and_count, **kwargs)
    return (EXIT_NO_SANDBOX if code == 0 and tally.no_sandbox else code), tally
