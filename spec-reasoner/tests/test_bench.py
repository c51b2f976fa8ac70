"""The bench's arithmetic on hand-made runs: answers checked by the real `ds-benchmark score`, paired speedup and
accuracy deltas with intervals, the goal, the plot, and runs read back for --resume."""

import json

import pytest

from mimo_core.record import TaskRecord
from mimo_core.settings import Settings

from spec_reasoner.bench import Bench, Plan, Run, runs_file, summarise
from spec_reasoner.plot import plot
from spec_reasoner.reasoner import ReasoningOptions

PAIR = ("d", "o")
RECORDS = [TaskRecord(id=f"m{i}", domain="math", task=f"{i} + 1?", reference={"answer": str(i + 1)}) for i in range(4)]


def run(arm, i, answer, wall_s, drafted=0, accepted=0):
    return Run("d->o", arm, f"m{i}", "math", 1.0, answer, None, wall_s, 10, 20, 100, drafted, accepted,
               {"draft": wall_s / 4, "verify": wall_s / 2, "oracle": wall_s / 4})


def test_figures_against_oracle_only(tmp_path):
    runs = [run("oracle-only", i, str(i + 1), 10.0) for i in range(4)]
    runs += [run("spec@7", i, str(i + 1) if i < 3 else "0", 5.0, drafted=3, accepted=2) for i in range(4)]
    plan = Plan([PAIR], [7.0], ReasoningOptions(), tmp_path / "runs.jsonl")
    bench = summarise(RECORDS, runs, plan, {"n": 4, "domains": ["math"]}, Settings(base_url="http://x.invalid/v1"))
    base, spec = bench.arms
    assert (base.arm, base.accuracy, base.speedup, base.accuracy_delta) == ("oracle-only", 1.0, 1.0, 0.0)
    assert spec.accuracy == 0.75 and spec.accuracy_delta == -0.25  # ds-benchmark score found the wrong answer
    assert spec.speedup == 2.0 and spec.speedup_ci95 == [2.0, 2.0]  # every record twice as fast
    assert spec.accuracy_delta_ci95[0] < 0.0 <= spec.accuracy_delta_ci95[1]  # within the interval: goal met
    assert spec.acceptance_rate == pytest.approx(2 / 3, abs=1e-4) and spec.time_s["verify"] == 10.0
    assert bench.goal == {"d->o": True}
    assert Bench.from_dict(bench.to_dict()).arms[1].speedup == 2.0

    slower = [r if r.arm == "oracle-only" else Run(**{**r.to_dict(), "wall_s": 20.0}) for r in runs]
    assert summarise(RECORDS, slower, plan, {"n": 4, "domains": ["math"]}, Settings()).goal == {"d->o": False}

    plot(bench, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_are_read_back_for_resume(tmp_path):
    path = tmp_path / "runs.jsonl"
    assert runs_file(tmp_path / "absent.jsonl").load() == []
    kept = run("spec@5", 0, "1", 3.0)
    path.write_text(json.dumps(kept.to_dict()) + "\n")
    assert runs_file(path).load() == [kept]
    path.write_text('{"pairing": "d->o"}\n')
    with pytest.raises(ValueError, match="runs.jsonl:1"):
        runs_file(path).load()
