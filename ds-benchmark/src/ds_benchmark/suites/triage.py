"""Emergency-department vignettes written from structured facts; the true level comes from `esi.esi_level`."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from ..difficulty import Item, Measure
from ..esi import DANGER_SPO2, DANGER_ZONE, Patient, esi_level

# Difficulty (1..5) from the ESI decision point that settles the level: the further down the algorithm, the more
# questions must be answered right first. A (does the patient need a life-saving intervention now?) takes one
# observation: 1. B (high risk, new confusion, severe pain?) adds a judgement: 2. C (how many kinds of resources?)
# adds counting them against ESI's list: 3. D (two or more resources: are the vital signs in the danger zone for the
# age?) adds the age-specific thresholds: 4 when they are normal (level 3), and 5 when they are in the danger zone
# and raise the level to 2, an answer the resource count argues against: the vital signs alone must overrule it.
# The generator cycles A, B, C, D and puts half of D in the danger zone, so levels 1..5 take 1/4, 1/4, 1/4, 1/8, 1/8.
DIFFICULTY = {"A": 1.0, "B": 2.0, "C": 3.0, "D": 4.0, "D (danger zone)": 5.0}


def decision(level: int, decision_point: str) -> str:
    """The raw measure: the decision point that settled the level, and at D whether the danger zone decided it."""
    return "D (danger zone)" if decision_point == "D" and level == 2 else decision_point


@dataclass(frozen=True)
class Scenario:
    """A presentation: what brings the patient in, and the facts that go with it."""

    complaint: str  # follows "<a 34-year-old woman> ..."; {he}/{his} are the patient's pronouns
    ages: tuple[float, float]  # years
    resources: tuple[str, ...] = ()
    lifesaving: str | None = None
    high_risk: bool = False
    mental: str = "alert"
    pain: tuple[int, int] = (0, 3)
    fever: bool = False
    critical: bool = False  # vital signs of a patient in extremis


SCENARIOS: dict[str, tuple[Scenario, ...]] = {
    "A": (
        Scenario("was found on the floor at home by a neighbour and does not wake up", (45, 90),
                 resources=("blood tests", "a head CT scan"), mental="unresponsive", critical=True),
        Scenario("collapsed at a restaurant after eating shrimp; {his} lips and tongue are swelling and {he} has "
                 "audible stridor", (18, 60),
                 resources=("intravenous medication", "intravenous fluids"),
                 lifesaving="intramuscular epinephrine and airway support", critical=True),
        Scenario("is brought in by friends after a suspected opioid overdose, with pinpoint pupils and slow, shallow "
                 "breathing", (18, 45), resources=("blood tests",),
                 lifesaving="naloxone and bag-mask ventilation", mental="lethargic", critical=True),
        Scenario("has had a seizure that has not stopped for 10 minutes", (1, 12),
                 resources=("blood tests", "a head CT scan"),
                 lifesaving="an intravenous benzodiazepine to stop the seizure", mental="unresponsive", critical=True),
        Scenario("has a severe asthma attack, can speak only single words and is tiring", (8, 40),
                 resources=("a chest X-ray", "blood tests"),
                 lifesaving="continuous nebulised bronchodilators and preparation for intubation", critical=True),
    ),
    "B": (
        Scenario("has had crushing chest pain radiating to {his} left arm for 40 minutes and is sweating", (45, 80),
                 resources=("blood tests", "a chest X-ray"), high_risk=True, pain=(4, 6)),
        Scenario("developed sudden weakness of {his} right arm and slurred speech an hour ago", (55, 85),
                 resources=("blood tests", "a head CT scan"), high_risk=True, pain=(0, 2)),
        Scenario("is brought in by {his} daughter because {he} has been muddled since this morning", (70, 92),
                 resources=("blood tests", "a urine test"), mental="confused", pain=(0, 2)),
        Scenario("has severe left flank pain coming in waves and radiating to the groin", (25, 60),
                 resources=("a urine test", "a CT scan", "intravenous pain medication"), pain=(8, 10)),
        Scenario("tells the nurse that {he} plans to kill {him}self tonight", (18, 60),
                 resources=("a psychiatric consultation",), high_risk=True, pain=(0, 0)),
        Scenario("has had a fever and has been feeding poorly since yesterday", (0.04, 0.2),
                 resources=("blood tests", "a urine test"), fever=True, pain=(0, 2)),
    ),
    "C": (
        Scenario("has had a sore throat for two days and is eating and drinking normally", (12, 50)),
        Scenario("needs a refill of {his} blood-pressure tablets, which ran out yesterday", (40, 75)),
        Scenario("noticed an itchy rash on {his} forearm after gardening", (20, 70)),
        Scenario("has had an earache since last night", (3, 10), pain=(2, 4)),
        Scenario("twisted {his} ankle playing football and walks with a limp", (14, 40),
                 resources=("an X-ray of the ankle",), pain=(3, 5)),
        Scenario("has had burning on urination for two days", (18, 60), resources=("a urine test",), pain=(2, 3)),
        Scenario("cut {his} forearm on broken glass; the 3 cm wound has stopped bleeding but gapes", (16, 60),
                 resources=("stitches (laceration repair)",), pain=(2, 4)),
    ),
    "D": (
        Scenario("has had pain in the right lower abdomen since yesterday, with nausea", (15, 45),
                 resources=("blood tests", "an abdominal CT scan"), pain=(4, 6)),
        Scenario("has had vomiting and diarrhoea for three days and feels dizzy on standing", (20, 80),
                 resources=("blood tests", "intravenous fluids"), pain=(2, 4)),
        Scenario("has had a cough and fever for five days", (30, 85),
                 resources=("a chest X-ray", "blood tests"), fever=True, pain=(1, 3)),
        Scenario("fell at home and has pain in {his} right hip but can still move the leg", (70, 90),
                 resources=("an X-ray of the hip", "blood tests"), pain=(4, 6)),
        Scenario("has been vomiting since this morning and has had fewer wet nappies", (0.3, 2.5),
                 resources=("blood tests", "intravenous fluids"), pain=(1, 3)),
        Scenario("has had a cough, fever and fast breathing for two days", (3, 8),
                 resources=("a chest X-ray", "nebulised medication"), fever=True, pain=(1, 3)),
    ),
}

# Typical resting ranges (HR, RR) by the same age bands as the danger zone, all below its thresholds.
NORMAL_VITALS = ((110, 150, 30, 45), (90, 140, 24, 35), (75, 120, 18, 26), (60, 95, 12, 19))
PRONOUNS = {
    "female": {"he": "she", "his": "her", "him": "her", "He": "She", "His": "Her"},
    "male": {"he": "he", "his": "his", "him": "him", "He": "He", "His": "His"},
}
MENTAL_TEXT = {
    "alert": "{He} is alert and answers appropriately for {his} age.",
    "confused": "{He} is confused and does not know where {he} is, which the family says is new.",
    "lethargic": "{He} is drowsy and opens {his} eyes only to a loud voice.",
    "unresponsive": "{He} does not respond to voice or to pain.",
}


def _age_text(years: float, sex: str) -> str:
    noun = {"female": ("woman", "girl"), "male": ("man", "boy")}[sex][years < 16]
    if years < 1 / 6:
        return f"a {max(1, round(years * 52))}-week-old baby {noun}"
    if years < 1:
        return f"a {max(1, round(years * 12))}-month-old baby {noun}"
    return f"a {int(years)}-year-old {noun}"


def _vitals(s: Scenario, age: float, rng: random.Random, danger: bool) -> tuple[int, int, int, float]:
    """Heart rate, respiratory rate, SpO2 and temperature: normal for the age, critical, or one in the danger zone."""
    band = next(i for i, (limit, _, _) in enumerate(DANGER_ZONE) if age < limit)
    hr_lo, hr_hi, rr_lo, rr_hi = NORMAL_VITALS[band]
    hr, rr, spo2 = rng.randint(hr_lo, hr_hi), rng.randint(rr_lo, rr_hi), rng.randint(95, 100)
    if s.critical:
        hr, rr, spo2 = rng.choice([rng.randint(30, 45), rng.randint(150, 190)]), rng.randint(4, 8), rng.randint(70, 86)
    elif danger:
        _, hr_max, rr_max = DANGER_ZONE[band]
        which = rng.choice(["hr", "rr", "spo2"])
        hr = hr_max + rng.randint(5, 30) if which == "hr" else hr
        rr = rr_max + rng.randint(3, 12) if which == "rr" else rr
        spo2 = DANGER_SPO2 - rng.randint(1, 5) if which == "spo2" else spo2
    temp = round(rng.uniform(38.2, 39.6) if s.fever else rng.uniform(36.3, 37.4), 1)
    return hr, rr, spo2, temp


def _vignette(p: Patient) -> str:
    pronouns = PRONOUNS[p.sex]
    lines = [f"{_age_text(p.age_years, p.sex).capitalize()} {p.complaint}.",
             MENTAL_TEXT[p.mental].format(**pronouns),
             "" if p.mental == "unresponsive" else f"Pain score {p.pain}/10.",
             f"Vital signs: heart rate {p.hr}/min, respiratory rate {p.rr}/min, SpO2 {p.spo2}% on room air, "
             f"temperature {p.temp_c:.1f} C."]
    if p.lifesaving:
        lines.append(f"The team judges that {pronouns['he']} needs {p.lifesaving} right now.")
    if p.resources:
        *most, last = p.resources
        lines.append(f"The physician expects to order {', '.join(most) + ' and ' if most else ''}{last}.")
    else:
        lines.append("No tests or procedures are expected beyond an examination and a prescription.")
    lines.append("What is the ESI triage level (1-5)?")
    return " ".join(line for line in lines if line)


def generate(n: int, rng: random.Random) -> Iterator[Item]:
    """`n` vignettes, spread evenly over the four decision points; the reference holds the level and the facts."""
    points = list(SCENARIOS)
    for i in range(n):
        point = points[i % len(points)]
        s = rng.choice(SCENARIOS[point])
        age = round(rng.uniform(*s.ages), 2)
        sex = rng.choice(["female", "male"])
        hr, rr, spo2, temp = _vitals(s, age, rng, danger=point == "D" and rng.random() < 0.5)
        patient = Patient(age_years=age, sex=sex, complaint=s.complaint.format(**PRONOUNS[sex]), hr=hr, rr=rr,
                          spo2=spo2, temp_c=temp, mental=s.mental, pain=rng.randint(*s.pain), resources=s.resources,
                          lifesaving=s.lifesaving, high_risk=s.high_risk)
        level, decided_at = esi_level(patient)
        reference = {"level": level, "decision_point": decided_at, "facts": asdict(patient)}
        settled = decision(level, decided_at)
        yield Item(_vignette(patient), reference, DIFFICULTY[settled], Measure("esi_decision_point", settled))
