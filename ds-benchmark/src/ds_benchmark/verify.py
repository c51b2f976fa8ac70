"""The verifiers behind `score`: each domain's answer checked against the record's reference, never by a model."""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

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
# Why a verdict has `correct: null`. Only the last two are the scorer's own failures (its trace entry says error).
Unchecked = Literal["no_reference", "stage_error", "bad_reference", "no_sandbox"]


class BadReference(ValueError):
    """The record's reference cannot be used to check an answer: the benchmark's error, never the model's."""


@dataclass
class Verdict(Contract):
    """A record's `verdict` section; a checker's own findings (expected, got, isolation, ...) ride along in `extra`."""

    EXTRA = "keep"

    correct: bool | None  # None: not checked, for the reason in `unchecked`; it scores 0 and is never wrong
    confidence: float | None
    difficulty: float
    score: float
    overconfident_wrong: bool
    detail: str
    unchecked: Unchecked | None = None  # None when the answer was checked (or for verdicts written before this field)
    extra: dict[str, Any] = field(default_factory=dict)


def verdict(record: TaskRecord, formula: str = "design") -> Verdict:
    """The record's verdict: correct, confidence, difficulty, score, overconfident_wrong, detail (and checker extras).

    Only a checked answer is right or wrong; a record with no answer and no error is wrong (the model gave nothing).
    `correct` is None, the score 0 and `unchecked` says why, when: the record has no reference (a user's own task:
    not scored); it has no answer because a stage failed (its `error`); the reference cannot be used (a verifier's
    ValueError, TypeError or ZeroDivisionError: the benchmark's error); or no sandbox works here to run code."""
    confidence = record.consensus.get("confidence")
    confidence = float(confidence) if isinstance(confidence, (int, float)) else None
    answer = record.answer
    extra: dict[str, Any] = {}
    correct: bool | None = None
    unchecked: Unchecked | None = None
    if not record.reference:
        unchecked, detail = "no_reference", NO_REFERENCE
    elif (answer is None or not str(answer).strip()) and record.error:
        unchecked, detail = "stage_error", f"not checked: no answer, because a stage failed ({record.error})"
    elif answer is None or not str(answer).strip():
        correct, detail = False, "no answer (consensus.answer is missing)"
    else:
        try:
            correct, detail, extra = VERIFIERS[record.domain](str(answer), record.reference)
        except (ValueError, TypeError, ZeroDivisionError) as exc:
            unchecked, detail = "bad_reference", f"cannot check: {exc}"
        except SandboxUnavailable as exc:
            unchecked, detail, extra = "no_sandbox", f"not run: {exc}", {"isolation": None}
    return Verdict(
        correct=correct,
        confidence=confidence,
        difficulty=record.difficulty,
        score=0.0 if correct is None else record_score(correct, confidence, formula),
        overconfident_wrong=correct is False and is_confident(confidence),
        detail=detail,
        unchecked=unchecked,
        extra=extra,
    )


def score_record(record: TaskRecord, ctx: object = None) -> None:
    """The `score` stage's work on one record: write its verdict. When the scorer itself failed (a reference it
    cannot use, no sandbox) it also raises, BadReference or SandboxUnavailable, so that the stage sets the record's
    `error` and marks its trace entry as an error. A record with no reference, or with a stage's error, is not the
    scorer's failure: its trace entry is ok and its `error` stays as it was."""
    checked = verdict(record)
    record.verdict = checked.to_dict()
    if checked.unchecked == "bad_reference":
        raise BadReference(checked.detail)
    if checked.unchecked == "no_sandbox":
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
        """Count one scored record: right, wrong, not checked (an error), or not scored (no reference)."""
        correct, unchecked = record.verdict.get("correct"), record.verdict.get("unchecked")
        with self._lock:
            self.records += 1
            self.correct += correct is True
            self.wrong += correct is False
            self.unscored += unchecked == "no_reference"
            not_run = correct is None and unchecked != "no_reference"
            self.not_run += not_run
            # The stage sets the error of a record the scorer failed on only after this count.
            self.errors += record.error is not None or not_run

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
    """`ds-benchmark score`: records in, records with `verdict` out; the exit code and the tally.

    The exit code is 2 at a line that is not a record (after writing those before it), EXIT_NO_SANDBOX when coding
    records could not be run (said once on stderr), else 0: a record that could not be checked for any other reason
    (a stage's error, an unusable reference) is one record's error, counted in the tally, and the stream goes on."""
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
