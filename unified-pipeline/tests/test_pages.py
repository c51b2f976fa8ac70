"""The HTML reports: escaped, self-contained, and rendered by a real headless browser into tables and images; their
charts: accuracy on its whole axis, every 95% interval drawn, a missing figure marked."""

import base64
import html.parser
import math
import shutil
import subprocess

import matplotlib.pyplot as plt
import pytest
from matplotlib.container import ErrorbarContainer

from ds_benchmark.compare import compare
from ds_benchmark.report import build_results
from ds_benchmark.suites import build_suite
from ds_benchmark.verify import score_record
from mimo_core.record import TraceEntry
from unified_pipeline.pages import comparison_page, results_page
from unified_pipeline.plots import comparison_figure, results_figure

HOSTILE = '</td><script>alert(1)</script><img src="https://example.com/x.png" onerror="alert(2)">'
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def ablation_run(right_every: int = 2):
    """Scored records of a small ablation (full, and spec-reasoner switched off), one with a hostile id (a user's
    task file may hold anything) and hostile answers."""
    records = []
    for disabled, t0 in (([], 1000.0), (["spec-reasoner"], 2000.0)):
        for i, r in enumerate(build_suite(6, ["math", "triage"], 4)):
            truth = r.reference.get("answer") or f"ESI {r.reference.get('level')}"
            good = i % right_every or disabled
            r.consensus = {"answer": truth if not good else HOSTILE, "confidence": 0.9}
            r.config["disabled"] = disabled
            r.id = HOSTILE if i == 0 else r.id
            r.trace.append(TraceEntry("multi-agent-orchestrator", "ok", t0 + i, t0 + i + 2.0, 2.0, 2, 100, 40))
            score_record(r)
            records.append(r)
    return build_results(records)


class Elements(html.parser.HTMLParser):
    """The tags of a page and their attributes."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def elements(page: str) -> list[tuple[str, dict]]:
    parser = Elements()
    parser.feed(page)
    return parser.tags


def assert_safe_and_self_contained(page: str) -> None:
    tags = elements(page)
    assert not any(tag == "script" for tag, _ in tags)
    assert not any(key.startswith("on") for _, attrs in tags for key in attrs)
    sources = [attrs.get("src") or attrs.get("href") for _, attrs in tags if attrs.get("src") or attrs.get("href")]
    assert sources and all(src.startswith("data:image/png;base64,") for src in sources)  # nothing fetched
    for src in sources:
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"


def test_results_page_escapes_what_models_wrote_and_fetches_nothing():
    results = ablation_run()
    page = results_page(results, "run <a>")
    assert_safe_and_self_contained(page)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "run &lt;a&gt;" in page
    assert "component impact" in page and results.impact[0].component == "spec-reasoner"


def test_comparison_page_says_when_runs_are_not_comparable():
    a, b = ablation_run(), ablation_run(right_every=3)
    b.seed = 7
    page = comparison_page(compare(a, b), a, b, "a", "b")
    assert_safe_and_self_contained(page)
    assert "NOT comparable: different seeds" in page


def _browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


@pytest.mark.skipif(_browser() is None, reason="no headless browser installed (.ci/run installs Debian's chromium)")
def test_a_real_browser_renders_the_tables_and_images(tmp_path):
    results = ablation_run()
    pages = {"results.html": results_page(results, "run"),
             "compare.html": comparison_page(compare(results, results), results, results, "a", "b")}
    for name, page in pages.items():
        (tmp_path / name).write_text(page, encoding="utf-8")
        dom = subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                              (tmp_path / name).as_uri()], capture_output=True, text=True, timeout=120).stdout
        tags = [tag for tag, _ in elements(dom)]
        assert tags.count("table") >= (5 if name == "results.html" else 2) and tags.count("tr") > 10
        assert tags.count("img") == 1 and "data:image/png;base64," in dom
        assert "component impact" in dom and "script" not in tags


def _intervals(ax) -> list[list[float]]:
    """The [low, high] of every error bar drawn on an axis, left to right."""
    segments = [s for c in ax.containers if isinstance(c, ErrorbarContainer) for s in c.lines[2][0].get_segments()]
    return [[round(float(s[0][1]), 6), round(float(s[1][1]), 6)] for s in sorted(segments, key=lambda s: s[0][0])]


def test_an_all_zero_accuracy_chart_keeps_accuracys_whole_axis():
    results = ablation_run()
    for config in results.configurations:
        config.figures.accuracy, config.figures.accuracy_ci95 = 0.0, [0.0, 0.0]
    fig = results_figure(results)
    try:
        ds, accuracy, impact = fig.axes
        assert accuracy.get_ylim() == (0.0, 1.0)
        assert _intervals(ds) == [c.figures.ds_ci95 for c in results.configurations]
        assert _intervals(impact) == [r.ds_drop_ci95 for r in results.impact]
    finally:
        plt.close(fig)


def test_a_missing_figure_is_marked_not_drawn_as_zero():
    results = ablation_run()
    results.configurations[1].figures.accuracy, results.configurations[1].figures.accuracy_ci95 = None, None
    fig = results_figure(results)
    try:
        accuracy = fig.axes[1]
        heights = [bar.get_height() for bar in accuracy.containers[0]]
        assert heights[0] == results.configurations[0].figures.accuracy and math.isnan(heights[1])
        assert [t.get_text() for t in accuracy.texts] == ["n/a"]
        assert len(_intervals(accuracy)) == 1
    finally:
        plt.close(fig)


def test_the_comparison_chart_draws_each_runs_interval_and_the_paired_one():
    a, b = ablation_run(), ablation_run(right_every=3)
    comparison = compare(a, b)
    fig = comparison_figure(comparison, a, b, "a", "b")
    try:
        (ds, accuracy), (ds_delta, accuracy_delta) = fig.axes[:2], fig.axes[2:]
        # above: A's and B's own intervals per configuration (A left of B); below: B - A's paired interval
        assert _intervals(ds) == [ci for ca, cb in zip(a.configurations, b.configurations)
                                  for ci in (ca.figures.ds_ci95, cb.figures.ds_ci95)]
        assert _intervals(ds_delta) == [c.delta_ci95["ds"] for c in comparison.configurations]
        assert _intervals(accuracy_delta) == [c.delta_ci95["accuracy"] for c in comparison.configurations]
        assert accuracy.get_ylim() == (0.0, 1.0) and len(_intervals(accuracy)) == 2 * len(a.configurations)
    finally:
        plt.close(fig)
