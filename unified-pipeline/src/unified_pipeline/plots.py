"""The figures people look at: D/s per configuration, the component impact bars, and two runs side by side."""

from __future__ import annotations

import base64
import io
import math

import matplotlib

matplotlib.use("Agg")  # files and pages only: no display on a server or in CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ds_benchmark.compare import Comparison  # noqa: E402
from ds_benchmark.results import Figures, Results  # noqa: E402


def _bars(ax, xs: list[float], values: list[float | None], cis: list[list[float] | None], color: str,
          label: str | None = None, width: float = 0.8) -> None:
    """Bars with their 95% intervals as error bars where an interval exists; a missing figure gets no bar and says
    "n/a" (drawing it as 0 would show a figure nobody measured)."""
    heights = [math.nan if v is None else v for v in values]
    ax.bar(xs, heights, width, color=color, label=label)
    for x, value in zip(xs, values):
        if value is None:
            ax.annotate("n/a", (x, 0.0), ha="center", va="bottom", fontsize=8)
    known = [(x, ci) for x, ci in zip(xs, cis) if ci]
    if known:
        # drawn from the interval's own ends, not as +/- around the bar: a bootstrap interval need not hold its
        # point estimate, and matplotlib refuses negative error lengths
        centres = [(ci[0] + ci[1]) / 2 for _, ci in known]
        halves = [(ci[1] - ci[0]) / 2 for _, ci in known]
        ax.errorbar([x for x, _ in known], centres, yerr=halves, fmt="none", ecolor="black", elinewidth=1,
                    capsize=4, label="_95% interval")


def _axis(ax, title: str, labels: list[str], accuracy: bool = False) -> None:
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_title(title)
    ax.axhline(0.0, color="black", linewidth=0.6)
    if accuracy:
        ax.set_ylim(0.0, 1.0)  # a share: its whole range, whatever the figures (all zero is a real result)


def results_figure(results: Results) -> Figure:
    """D/s and accuracy per configuration with their 95% intervals, and the component impact table as bars (with
    its paired intervals) when the run is an ablation."""
    panels = 3 if results.impact else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2), layout="constrained")
    names = [c.name for c in results.configurations]
    figures: list[Figures] = [c.figures for c in results.configurations]
    xs = list(range(len(names)))
    _bars(axes[0], xs, [f.ds for f in figures], [f.ds_ci95 for f in figures], "tab:blue")
    _axis(axes[0], "D/s (95% bootstrap interval)", names)
    _bars(axes[1], xs, [f.accuracy for f in figures], [f.accuracy_ci95 for f in figures], "tab:green")
    _axis(axes[1], "accuracy (95% bootstrap interval)", names, accuracy=True)
    if results.impact:
        _bars(axes[2], list(range(len(results.impact))), [r.ds_drop for r in results.impact],
              [r.ds_drop_ci95 for r in results.impact], "tab:red")
        _axis(axes[2], "D/s drop when switched off (paired 95% interval)", [r.component for r in results.impact])
    return fig


def _interval(results: Results, name: str, key: str) -> list[float] | None:
    """A configuration's own 95% interval for `key` (ds, accuracy) in its results file."""
    config = next((c for c in results.configurations if c.name == name), None)
    return None if config is None else getattr(config.figures, f"{key}_ci95")


def comparison_figure(comparison: Comparison, a: Results, b: Results, a_name: str, b_name: str) -> Figure:
    """For each configuration both runs share, D/s and accuracy: above, A and B side by side, each with its own 95%
    interval; below, B - A with the comparison's paired 95% interval."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 8), layout="constrained")
    configs = comparison.configurations
    labels = [c.a if c.a == c.b else f"{c.a} / {c.b}" for c in configs]
    xs = list(range(len(labels)))
    for column, key in enumerate(("ds", "accuracy")):
        name = "D/s" if key == "ds" else "accuracy"
        top, bottom = axes[0][column], axes[1][column]
        _bars(top, [x - 0.2 for x in xs], [c.a_figures[key] for c in configs],
              [_interval(a, c.a, key) for c in configs], "tab:blue", a_name, 0.4)
        _bars(top, [x + 0.2 for x in xs], [c.b_figures[key] for c in configs],
              [_interval(b, c.b, key) for c in configs], "tab:orange", b_name, 0.4)
        _axis(top, f"{name} (95% bootstrap interval)", labels, accuracy=key == "accuracy")
        top.legend()
        _bars(bottom, xs, [c.delta[key] for c in configs], [c.delta_ci95.get(key) for c in configs], "tab:gray")
        _axis(bottom, f"{name}: {b_name} - {a_name} (paired 95% interval)", labels)
    return fig


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes (and closed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def data_uri(image: bytes) -> str:
    """A PNG as a data: URI, for a page that fetches nothing."""
    return "data:image/png;base64," + base64.b64encode(image).decode("ascii")
