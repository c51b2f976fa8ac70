"""report -> results file -> compare, through the CLI, and the refusals on bad input."""

import json

import pytest
from typer.testing import CliRunner

from ds_benchmark.cli import app
from ds_benchmark.compare import Comparison
from ds_benchmark.results import Results
from ds_benchmark.suites import build_suite
from ds_benchmark.verify import score_record
from mimo_core.record import TraceEntry
from mimo_core.served import Served

runner = CliRunner()


def answered_run(seed=4, disabled=(), right_every=2, t0=1000.0, n=8, domains=("math", "triage")):
    """Triage and math records answered (every `right_every`-th wrongly), traced, and scored."""
    records = build_suite(n, list(domains), seed)
    for i, r in enumerate(records):
        truth = r.reference.get("answer") or f"ESI {r.reference.get('level')}"
        r.consensus = {"answer": truth if i % right_every else "ESI 0 / 0", "confidence": 0.9}
        r.config["disabled"] = list(disabled)
        start = t0 + i
        r.trace.append(TraceEntry("multi-agent-orchestrator", "ok", start, start + 2.0, 2.0, 2, 100, 40))
        score_record(r)
    return records


def write(path, records):
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    return path


def report(tmp_path, name, records, *args):
    out = tmp_path / f"{name}.json"
    result = runner.invoke(app, ["report", str(write(tmp_path / f"{name}.jsonl", records)), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return out


def test_report_round_trip(tmp_path):
    path = report(tmp_path, "a", answered_run())
    data = json.loads(path.read_text())
    results = Results.from_dict(data)
    assert results.to_dict() == data
    assert results.SCHEMA == "mimo.results/1" and results.seed == 4 and len(results.task_ids) == 8
    (config,) = results.configurations
    assert config.name == "full" and config.figures.n == 8 and config.figures.correct == 4
    assert config.figures.wall_s == pytest.approx(9.0)  # first start 1000, last end 1007 + 2
    assert set(config.domains) == {"math", "triage"} and "multi-agent-orchestrator" in config.stages
    assert config.figures.overconfident_wrong == 4 and len(config.outcomes) == 8


def test_wall_s_and_formula_flags(tmp_path):
    records = answered_run()
    design = json.loads(report(tmp_path, "d", records, "--wall-s", "10").read_text())
    seed = json.loads(report(tmp_path, "s", records, "--wall-s", "10", "--formula", "seed").read_text())
    d, s = design["configurations"][0]["figures"], seed["configurations"][0]["figures"]
    assert d["wall_s"] == s["wall_s"] == 10
    assert d["ds"] < s["ds"]  # the seed's formula never applies the penalty


def test_ablation_run_holds_one_configuration_per_disabled_set(tmp_path):
    records = (answered_run(right_every=8) + answered_run(disabled=["spec-reasoner"], t0=2000.0, right_every=2)
               + answered_run(disabled=["tiered-kv-cache"], t0=3000.0, right_every=8))
    results = Results.from_dict(json.loads(report(tmp_path, "ab", records).read_text()))
    assert [c.name for c in results.configurations] == ["full", "without spec-reasoner", "without tiered-kv-cache"]
    assert all(c.figures.wall_s == pytest.approx(9.0) for c in results.configurations)
    # the impact table: largest D/s drop first; without spec-reasoner, half the answers are wrong
    spec, kv = results.impact
    assert spec.component == "spec-reasoner" and kv.component == "tiered-kv-cache"
    assert spec.ds_drop == pytest.approx(results.configurations[0].figures.ds - results.configurations[1].figures.ds)
    assert spec.ds_drop > 0 and spec.ds_drop_ci95[0] <= spec.ds_drop <= spec.ds_drop_ci95[1]
    assert kv.ds_drop == 0 and kv.paired_tasks == 8


def test_wall_time_is_model_work_without_scoring_or_the_pause_of_a_resumed_run(tmp_path):
    records = answered_run()
    for i, r in enumerate(records):
        start = 1000.0 + i + (100.0 if i >= 4 else 0.0)  # the run stopped after 4 records and resumed 100 s later
        r.trace = [TraceEntry("multi-agent-orchestrator", "ok", start, start + 2.0, 2.0, 2, 100, 40),
                   TraceEntry("ds-benchmark", "ok", start + 2.0, start + 30.0, 28.0)]  # slow scoring: not counted
    (config,) = Results.from_dict(json.loads(report(tmp_path, "r", records).read_text())).configurations
    assert config.figures.wall_s == pytest.approx(5.0 + 5.0)  # [1000, 1005] and [1104, 1109]


def test_compare_pairs_tasks_and_reports_deltas(tmp_path):
    a = report(tmp_path, "a", answered_run(right_every=2))
    b = report(tmp_path, "b", answered_run(right_every=8))
    result = runner.invoke(app, ["compare", str(a), str(b)])
    assert result.exit_code == 0, result.output
    comparison = json.loads(result.stdout)
    assert comparison["comparable"] is True and comparison["schema"] == "mimo.comparison/1"
    assert Comparison.from_dict(comparison).to_dict() == comparison  # the output reads back through its contract
    (c,) = comparison["configurations"]
    assert c["paired_tasks"] == 8 and c["delta"]["accuracy"] == pytest.approx(3 / 8)
    low, high = c["delta_ci95"]["ds"]
    assert low <= c["delta"]["ds"] <= high
    assert "accuracy" in result.stderr


def reasons(tmp_path, a_records, b_records, *b_args):
    a, b = report(tmp_path, "a", a_records), report(tmp_path, "b", b_records, *b_args)
    result = runner.invoke(app, ["compare", str(a), str(b)])
    assert result.exit_code == 0, result.output
    comparison = json.loads(result.stdout)
    assert comparison["comparable"] is (not comparison["reasons"])
    assert ("NOT comparable: different" in result.stderr) is (not comparison["comparable"])
    return comparison["reasons"]


def test_compare_says_when_runs_are_not_comparable(tmp_path):
    assert reasons(tmp_path, answered_run(seed=4), answered_run(seed=5)) == [
        "different suites: the same 8 task ids hold different tasks or references", "different seeds (4 vs 5)"]


def test_compare_says_what_differs_in_a_users_words(tmp_path):
    assert reasons(tmp_path, answered_run(n=30), answered_run(n=6)) == ["different suites: 30 tasks vs 6"]
    mixed = answered_run(n=6, domains=("math", "coding", "triage"))
    assert reasons(tmp_path, answered_run(n=6), mixed) == [
        "different suites: math+triage (math from gsm8k) vs math+coding+triage (math from gsm8k), "
        "other task ids (2 of 6 in one run only)"]
    assert reasons(tmp_path, answered_run(), answered_run(), "--formula", "seed") == [
        "different D/s formulas (design vs seed)"]
    other_model = answered_run()
    for r in other_model:
        r.trace[-1].provenance = {"models": ["qwen2.5-coder-0.5b"]}
    assert reasons(tmp_path, answered_run(), other_model) == [
        "different models (none recorded vs qwen2.5-coder-0.5b)"]
    reweighed = answered_run()
    for r in reweighed[:3]:  # as a run made before the difficulty scale changed
        r.difficulty += 1
    first = sorted(r.id for r in reweighed[:3])[0]
    before = next(r.difficulty for r in answered_run() if r.id == first)
    assert reasons(tmp_path, answered_run(), reweighed) == [
        f"different difficulties: 3 of 8 tasks weigh differently ({first}: {before:g} vs {before + 1:g})"]
    assert reasons(tmp_path, answered_run(), answered_run()) == []


def test_unknown_results_schema_is_refused(tmp_path):
    a = report(tmp_path, "a", answered_run())
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "mimo.results/9"}))
    result = runner.invoke(app, ["compare", str(a), str(other)])
    assert result.exit_code == 2
    expected = f"ds-benchmark: error: {other}: unknown schema 'mimo.results/9' (expected 'mimo.results/1')"
    assert result.stderr.strip() == expected
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"schema": "mimo.results/1", "suite": {}}))
    result = runner.invoke(app, ["compare", str(a), str(broken)])
    assert result.exit_code == 2 and ": missing seed" in result.stderr and len(result.stderr.splitlines()) == 1


def test_report_refuses_bad_records_and_untimed_runs(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"schema": "mimo.task/1", "id": "x", "domain": "math"}\n')
    result = runner.invoke(app, ["report", str(bad)])
    assert result.exit_code == 2 and result.stderr.strip() == f"ds-benchmark: error: {bad}: line 1: missing task"
    untimed = answered_run()
    for r in untimed:
        r.trace.clear()
    result = runner.invoke(app, ["report", str(write(tmp_path / "untimed.jsonl", untimed))])
    assert result.exit_code == 2 and "--wall-s" in result.stderr


def test_suite_command(tmp_path):
    result = runner.invoke(app, ["suite", "--n", "6", "--domains", "math", "triage", "--seed", "3"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["domain"] for r in lines] == ["math", "triage"] * 3
    result = runner.invoke(app, ["suite", "--n", "3", "--domains", "math", "poetry"])
    assert result.exit_code == 2 and "poetry" in result.stderr
    result = runner.invoke(app, ["suite", "--n", "3", "--dataset", "squad:x"])
    assert result.exit_code == 2 and "gsm8k:PATH" in result.stderr


def test_suite_splits_n_over_the_domains_and_refuses_fewer_tasks_than_domains():
    result = runner.invoke(app, ["suite", "--n", "31", "--domains", "math", "coding", "triage"])
    assert result.exit_code == 0 and result.stderr == ""  # the remainder goes to the first domains, silently
    domains = [json.loads(line)["domain"] for line in result.stdout.splitlines()]
    assert [domains.count(d) for d in ("math", "coding", "triage")] == [11, 10, 10]
    result = runner.invoke(app, ["suite", "--n", "2", "--domains", "math", "coding", "triage"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == "ds-benchmark: error: --n 2 is fewer than the 3 domains (math, coding, triage)\n"


def test_difficulty_command_prints_the_table():
    result = runner.invoke(app, ["difficulty", "--n", "40"])
    assert result.exit_code == 0, result.output
    header, rule, *rows = result.stdout.strip().splitlines()
    assert header.startswith("| suite | measure | tasks | level 1 |") and len(rows) == 4
    for row in rows:
        tasks, *levels, _mean = [cell.strip() for cell in row.strip("|").split("|")][2:]
        assert sum(map(int, levels)) == int(tasks)
    assert runner.invoke(app, ["difficulty", "--n", "0"]).stderr == "ds-benchmark: error: --n must be at least 1\n"


def test_report_only_reads_unscored_and_unchecked_records_are_errors(tmp_path, monkeypatch):
    records = answered_run()
    unscored, unchecked = records[0], records[1]
    unscored.verdict = {}
    unscored.consensus["answer"] = "```python\nimport os\nos.system('touch /tmp/report-ran-code')\n```"
    unchecked.verdict = {**unchecked.verdict, "correct": None, "detail": "not run: no sandbox works here"}
    monkeypatch.setenv("MIMO_BASE_URL", "http://elsewhere.example/v1")  # the report's own settings must not matter
    data = json.loads(report(tmp_path, "a", records).read_text())
    (config,) = data["configurations"]
    by_id = {o["id"]: o for o in config["outcomes"]}
    assert by_id[unscored.id]["correct"] is None and by_id[unscored.id]["error"].startswith("not scored")
    assert by_id[unchecked.id]["correct"] is None and by_id[unchecked.id]["score"] == 0.0
    figures = config["figures"]
    assert figures["not_run"] == 2 and figures["errors"] == 2
    assert figures["correct"] + figures["wrong"] + figures["not_run"] == figures["n"] == len(records)
    assert data["environment"]["backend"] == "unknown"  # these traces carry no provenance; the env is not asked


def test_provenance_comes_from_the_trace_and_the_cli_says_a_summary(tmp_path):
    records = answered_run()
    for r in records:
        r.trace[-1].provenance = {"backend": "remote", "endpoint": "https://api.example", "models": ["big"],
                                  "versions": {"mimo-core": "0.1.0"}, "machine": {"host": "node-7", "cpus": 64}}
    jsonl = write(tmp_path / "p.jsonl", records)
    result = runner.invoke(app, ["report", str(jsonl), "--out", str(tmp_path / "p.json")])
    env = json.loads((tmp_path / "p.json").read_text())["environment"]
    assert env["backend"] == "remote" and env["endpoints"] == ["https://api.example"] and "big" in env["models"]
    assert env["machines"] == [{"cpus": 64, "host": "node-7"}] and env["versions"] == {"mimo-core": ["0.1.0"]}
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("report: full: 8 records, ") and " correct, " in line and "D/s" in line


def served_run(disabled=(), cached=None, **kwargs):
    """`answered_run` whose agents' calls were served `cached` prompt tokens of 100 (None: the server said nothing)."""
    records = answered_run(disabled=disabled, **kwargs)
    for r in records:
        entry = r.trace[0]
        entry.served = Served()
        engine = {"cache": {"cached_tokens": cached}, "precision": {"policy": "native", "weight_bytes": 85,
                                                                    "weights_read": 80}} if cached is not None else None
        entry.served.add(2, 100, 40, None, engine)
    return records


def test_report_sums_what_each_configuration_and_stage_was_served(tmp_path):
    records = served_run(cached=60) + served_run(disabled=["tiered-kv-cache"], cached=0)
    results = Results.from_dict(json.loads(report(tmp_path, "served", records).read_text()))
    full, without = sorted(results.configurations, key=lambda c: len(c.disabled))
    assert full.served.prompt_tokens == 800 and full.served.cached_tokens == 480
    assert full.mechanism() == {"cached_share": 0.6, "bits_per_weight": 8.5, "accepted_per_pass": None}
    assert full.stages["multi-agent-orchestrator"]["served"]["cached_tokens"] == 480
    (impact,) = results.impact  # the row of the cache switched off shows its mechanism off
    assert impact.mechanism_full["cached_share"] == 0.6 and impact.mechanism_without["cached_share"] == 0.0


def test_a_figure_no_call_reported_stays_unreported_in_the_report(tmp_path):
    results = Results.from_dict(json.loads(report(tmp_path, "silent", served_run(cached=None)).read_text()))
    (config,) = results.configurations
    assert config.served.calls == 16 and config.served.cached_tokens is None
    assert config.served.reported["cached_tokens"] is False and config.mechanism()["cached_share"] is None


def test_compare_shows_the_mechanism_beside_ds(tmp_path):
    a = report(tmp_path, "a", served_run(cached=0))
    b = report(tmp_path, "b", served_run(cached=60))
    result = runner.invoke(app, ["compare", str(a), str(b)])
    assert result.exit_code == 0, result.output
    (config,) = Comparison.from_dict(json.loads(result.stdout)).configurations
    assert config.a_figures["cached_share"] == 0.0 and config.b_figures["cached_share"] == 0.6
    assert config.delta["cached_share"] == 0.6 and "cached_share" in result.stderr
