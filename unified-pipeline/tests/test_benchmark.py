"""run_benchmark.py and compare_benchmarks.py end to end on the real engine, and a run killed with its engine."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ds_benchmark.results import Results
from ds_benchmark.suites import build_suite
from mimo_core import daemon
from mimo_core.record import read_records
from mimo_core.settings import load_settings
from unified_pipeline import benchmark
from unified_pipeline.benchmark import RunFiles

pytestmark = pytest.mark.model
SCRIPT = Path(__file__).resolve().parents[1] / "run_benchmark.py"


@pytest.fixture(scope="module")
def run(engine_settings, tmp_path_factory):
    """One benchmark of 3 tasks (math, coding, triage) with its HTML report, for the tests below."""
    folder = tmp_path_factory.mktemp("bench")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MIMO_")}, **engine_settings.to_env()}
    done = subprocess.run([sys.executable, str(SCRIPT), "--n", "3", "--html", "a.html"], env=env, cwd=folder,
                          text=True, capture_output=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return folder, done


def test_a_run_writes_records_and_results_that_hold_to_their_schemas(run, engine_settings):
    folder, done = run
    files = RunFiles(folder / "results_v1.json")  # without --out: the quickstart's first results file
    results = Results.load(files.results)
    records = list(read_records(files.records.open()))
    assert sorted(str(r.id) for r in records) == sorted(results.task_ids) and len(records) == 3
    assert {r.domain for r in records} == {"math", "coding", "triage"}
    assert all(r.verdict and [e.stage for e in r.trace][-1] == "ds-benchmark" for r in records)
    (config,) = results.configurations
    assert config.name == "full" and config.figures.n == 3 and results.impact == []
    # D/s is over the wall time of model work: never longer than the stages' own span
    first = min(e.started_at for r in records for e in r.trace)
    last = max(e.ended_at for r in records for e in r.trace if e.stage != "ds-benchmark")
    assert 0 < config.figures.wall_s <= last - first + 1e-6
    assert "full: 3 records" in done.stderr and (folder / "a.html").stat().st_size > 0
    runs = engine_settings.cache_dir / "runs"
    assert not runs.exists() or not any(runs.iterdir())  # the private engines' state is gone with the run


def test_compare_a_run_with_itself_and_refuse_another_suite(run, run_script, tmp_path):
    folder, _ = run
    a = folder / "results_v1.json"
    done = run_script("compare_benchmarks", str(a), str(a), "--plot", "c.png", "--html", "c.html", "--json",
                      env=dict(os.environ), cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    comparison = json.loads(done.stdout)
    assert comparison["comparable"] and comparison["configurations"][0]["delta"]["ds"] == 0
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "c.html").stat().st_size > 0
    other = json.loads(a.read_text())
    other["suite"]["digest"], other["seed"] = "0" * 16, 9
    (tmp_path / "b.json").write_text(json.dumps(other))
    refused = run_script("compare_benchmarks", str(a), "b.json", env=dict(os.environ), cwd=tmp_path, timeout=120)
    assert refused.returncode == 2 and "not comparable: different suites" in refused.stderr
    assert "different seeds (0 vs 9)" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def _wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_run_killed_with_its_engine_resumes_with_no_record_lost_or_repeated(engine_settings, run_script, tmp_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MIMO_")}, **engine_settings.to_env()}
    files = RunFiles(tmp_path / "r.json")
    args = ["--n", "4", "--domains", "math", "triage", "--out", str(files.results)]
    process = subprocess.Popen([sys.executable, str(SCRIPT), *args], env=env, cwd=tmp_path, text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait(lambda: _lines(files.records) >= 1 or process.poll() is not None, 600, "the first scored record")
        assert process.poll() is None, process.stderr.read()
        private = benchmark.engine_settings(load_settings(env=env, dotenv_path=None), files, [])
        os.kill(daemon.read_state(private).pid, signal.SIGKILL)  # the engine dies under the running pipe
        _wait(lambda: _lines(files.records) >= 2 or process.poll() is not None, 600, "a record after the kill")
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # then the benchmark and its stages, mid-run
        process.wait()
    before = _lines(files.records)
    done = run_script("run_benchmark", "--resume", "--out", str(files.results), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "resuming:" in done.stderr
    records = list(read_records(files.records.open()))
    ids = [str(r.id) for r in records]
    assert sorted(ids) == sorted(str(r.id) for r in build_suite(4, ["math", "triage"], 0)) and before >= 1
    assert all(r.error is None and r.verdict for r in records)
    assert Results.load(files.results).configurations[0].figures.n == 4


def test_resume_refuses_flags_that_contradict_the_run(tmp_path, run_script):
    files = RunFiles(tmp_path / "r.json")
    files.plan.write_text(json.dumps({"schema": "mimo.benchmark-run/1", "n": 4, "domains": ["math"], "seed": 0,
                                      "math_source": "gsm8k", "configurations": [[]], "created_at": 0.0}))
    done = run_script("run_benchmark", "--resume", "--out", str(files.results), "--n", "5",
                      env=dict(os.environ), cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "drop --n 5 (the run has 4)" in done.stderr
    again = run_script("run_benchmark", "--out", str(files.results), env=dict(os.environ), cwd=tmp_path, timeout=120)
    assert again.returncode == 2 and "a run is already there" in again.stderr
