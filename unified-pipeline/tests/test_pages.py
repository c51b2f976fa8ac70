"""The HTML reports: escaped, self-contained, and rendered by a real headless browser into tables and images."""

import base64
import html.parser
import shutil
import subprocess

import pytest

from ds_benchmark.compare import compare
from ds_benchmark.report import build_results
from ds_benchmark.suites import build_suite
from ds_benchmark.verify import score_record
from mimo_core.record import TraceEntry
from unified_pipeline.pages import comparison_page, results_page

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
