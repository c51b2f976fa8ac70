"""The ESI function on hand-checked patients; each case names the decision point (ESI v4 handbook) that settles it."""

import pytest

from ds_benchmark.esi import Patient, danger_zone, esi_level


def patient(**facts) -> Patient:
    normal = dict(age_years=40, sex="female", complaint="", hr=80, rr=16, spo2=98, temp_c=37.0, mental="alert", pain=2,
                  resources=(), lifesaving=None, high_risk=False)
    return Patient(**{**normal, **facts})


@pytest.mark.parametrize(
    "facts, level, point",
    [
        # A: an immediate life-saving intervention, or unresponsive
        (dict(age_years=70, mental="unresponsive", hr=40, rr=6, spo2=80), 1, "A"),
        (dict(lifesaving="bag-mask ventilation and intubation", rr=6, spo2=82), 1, "A"),
        (dict(lifesaving="naloxone", mental="lethargic", high_risk=True), 1, "A"),  # A is asked before B
        # B: high risk, new confusion / lethargy / disorientation, severe pain or distress
        (dict(age_years=55, complaint="chest pain", high_risk=True, pain=5, resources=("labs", "x-ray")), 2, "B"),
        (dict(age_years=85, mental="confused", resources=("labs",)), 2, "B"),
        (dict(pain=8, resources=("urine test", "CT", "IV medication")), 2, "B"),
        (dict(pain=7), 2, "B"),  # 7/10 is where severe pain starts
        (dict(age_years=0.12, temp_c=38.3, hr=150, rr=40), 2, "B"),  # febrile infant under 3 months
        # C: how many kinds of resources
        (dict(complaint="sore throat"), 5, "C"),
        (dict(pain=6, resources=("ankle x-ray",)), 4, "C"),
        (dict(resources=("labs", "labs")), 4, "C"),  # one kind of resource counts once
        (dict(hr=125, resources=()), 5, "C"),  # danger-zone vitals are weighed only at D
        # D: two or more resources, then danger-zone vitals for the age
        (dict(resources=("labs", "abdominal CT"), hr=90), 3, "D"),
        (dict(resources=("labs", "abdominal CT"), hr=101), 2, "D"),  # > 8 years: HR > 100
        (dict(resources=("labs", "abdominal CT"), rr=21), 2, "D"),  # > 8 years: RR > 20
        (dict(resources=("labs", "IV fluids"), spo2=91), 2, "D"),  # any age: SpO2 < 92%
        (dict(age_years=2, resources=("labs", "IV fluids"), hr=150, rr=30), 3, "D"),  # 3 m - 3 y: HR 150 <= 160
        (dict(age_years=2, resources=("labs", "IV fluids"), hr=165, rr=30), 2, "D"),
        (dict(age_years=5, resources=("x-ray", "nebuliser"), hr=120, rr=32), 2, "D"),  # 3-8 y: RR > 30
        (dict(age_years=0.2, resources=("labs", "urine test"), hr=175, rr=45), 3, "D"),  # < 3 m: HR <= 180, RR <= 50
    ],
)
def test_hand_checked_patients(facts, level, point):
    assert esi_level(patient(**facts)) == (level, point)


def test_danger_zone_bands():
    assert not danger_zone(patient(age_years=0.1, hr=180, rr=50))
    assert danger_zone(patient(age_years=0.1, hr=181))
    assert danger_zone(patient(age_years=7.9, hr=141))
    assert not danger_zone(patient(age_years=8.5, hr=100, rr=20, spo2=92))
