"""The Emergency Severity Index, version 4: the facts of a patient and the level they lead to."""

from __future__ import annotations

from dataclasses import dataclass

# Danger-zone heart and respiratory rates by age (upper age bound in years, HR above, RR above), ESI v4 Figure 6-1.
DANGER_ZONE = ((0.25, 180, 50), (3.0, 160, 40), (8.0, 140, 30), (float("inf"), 100, 20))
DANGER_SPO2 = 92  # percent; any age


@dataclass(frozen=True)
class Patient:
    """The structured facts a vignette is written from."""

    age_years: float
    sex: str
    complaint: str
    hr: int
    rr: int
    spo2: int
    temp_c: float
    mental: str  # "alert", "confused", "lethargic", "disoriented" or "unresponsive"
    pain: int  # 0-10
    resources: tuple[str, ...]  # ESI resource kinds, each counted once (labs, imaging, IV fluids, ...)
    lifesaving: str | None = None  # the immediate life-saving intervention needed, if any
    high_risk: bool = False  # a situation the nurse would not let wait (chest pain of ACS, stroke signs, ...)


def danger_zone(p: Patient) -> bool:
    """Whether a vital sign is in the ESI danger zone for the patient's age."""
    hr_max, rr_max = next((hr, rr) for age, hr, rr in DANGER_ZONE if p.age_years < age)
    return p.hr > hr_max or p.rr > rr_max or p.spo2 < DANGER_SPO2


def esi_level(p: Patient) -> tuple[int, str]:
    """The ESI v4 level of `p` and the decision point (A-D) that settled it.

    Source: Gilboy N, Tanabe P, Travers D, Rosenau AM. Emergency Severity Index (ESI): A Triage Tool for Emergency
    Department Care, Version 4. Implementation Handbook. AHRQ Publication No. 12-0014 (2012, reissued 2020), ch. 2-6.

    A: requires an immediate life-saving intervention, or is unresponsive -> 1.
    B: a high-risk situation, new confusion / lethargy / disorientation, or severe pain or distress (pain >= 7/10) -> 2;
       a febrile infant under 3 months (>= 38.0 C) counts as high risk (ch. 6, pediatric fever).
    C: resources needed: none -> 5, one -> 4, two or more -> go to D.
    D: danger-zone vital signs for the age -> the handbook says "consider 2", which this function takes as 2; else 3.
    """
    if p.lifesaving or p.mental == "unresponsive":
        return 1, "A"
    febrile_infant = p.age_years < 0.25 and p.temp_c >= 38.0
    if p.high_risk or febrile_infant or p.mental in {"confused", "lethargic", "disoriented"} or p.pain >= 7:
        return 2, "B"
    if len(set(p.resources)) == 0:
        return 5, "C"
    if len(set(p.resources)) == 1:
        return 4, "C"
    return (2 if danger_zone(p) else 3), "D"
