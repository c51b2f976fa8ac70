"""Answer extraction per domain: where a model's free text becomes the answer that is voted on and scored.

Ideas from lm-evaluation-harness's GSM8K filters (a strict "#### N" match first, then a flexible last-number match);
the code is ours.
"""

from __future__ import annotations

import re
from fractions import Fraction

# A number as people write it: optional sign and currency, thousands separators, a decimal part or a fraction.
# The sign must not follow a word or digit, so "10-5" yields 10 and 5, not 10 and -5.
_NUMBER = r"(?<![\w.])[-\u2212]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|(?<![\w.])[-\u2212]?\$?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
_MARKED_RE = [
    re.compile(r"####\s*(" + _NUMBER + ")"),
    re.compile(r"\\boxed\{\s*(" + _NUMBER + r")\s*\}"),
    re.compile(r"answer\s*(?:is|:|=)\s*[^\d\-\u2212$.]{0,20}(" + _NUMBER + ")", re.IGNORECASE),
]
_FENCE_RE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_CODE_LINE_RE = re.compile(r"^\s*(?:def|class|return|import|from|for|while|if)\b", re.MULTILINE)
_FINAL_LINE_RE = re.compile(r"^\s*answer\s*:\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_ESI_RE = [
    re.compile(r"\bESI\b\s*(?:level|category)?\s*[:=\-#]?\s*([1-5])\b", re.IGNORECASE),
    re.compile(r"\b(?:triage\s+)?level\s*[:=\-#]?\s*([1-5])\b", re.IGNORECASE),
]


def parse_number(token: str) -> Fraction | None:
    """The exact value of one number token ("$1,234.50", "-3/4", "96."), or None if it is not one."""
    cleaned = token.strip().rstrip(".").replace(",", "").replace("$", "").replace("\u2212", "-")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def extract_number(text: str | None) -> Fraction | None:
    """The final number in `text`: a marked one ("#### 96", \\boxed{96}, "the answer is 96") wins, else the last one."""
    if not text:
        return None
    for pattern in _MARKED_RE:
        marked = pattern.findall(text)
        if marked:
            return parse_number(marked[-1])
    numbers = _NUMBER_RE.findall(text)
    return parse_number(numbers[-1]) if numbers else None


def extract_code(text: str | None) -> str | None:
    """The program in `text`: the last ```python block, else the last bare ``` one, else all of it if it is code."""
    if not text:
        return None
    blocks = _FENCE_RE.findall(text)
    for wanted in ({"python", "py", "python3"}, {""}):
        chosen = [body for lang, body in blocks if lang.lower() in wanted]
        if chosen:
            return chosen[-1].rstrip() + "\n"
    if _CODE_LINE_RE.search(text):
        return text.rstrip() + "\n"
    return None


def extract_esi(text: str | None) -> int | None:
    """The ESI triage level 1-5 in `text` ("ESI 2", "ESI level 2", "Level: 3", or a bare "2"); the last mention wins."""
    if not text:
        return None
    for pattern in _ESI_RE:
        found = pattern.findall(text)
        if found:
            return int(found[-1])
    bare = text.strip().rstrip(".")
    return int(bare) if bare in {"1", "2", "3", "4", "5"} else None


def canonical_number(value: Fraction) -> str:
    """One spelling per value, so that "96", "96.0" and "$96" vote together: an integer, else a reduced fraction."""
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def extract_answer(domain: str, text: str | None) -> str | None:
    """The answer of `text` in its domain's canonical form, or None if there is none.

    math: the number; coding: the program; triage: the ESI level; general: the last "Answer: ..." line or the text."""
    if domain == "math":
        value = extract_number(text)
        return None if value is None else canonical_number(value)
    if domain == "coding":
        return extract_code(text)
    if domain == "triage":
        level = extract_esi(text)
        return None if level is None else str(level)
    final = _FINAL_LINE_RE.findall(text or "")
    stripped = final[-1] if final else (text or "").strip()
    return stripped or None
