"""The figures people look at: D/s per configuration, the component impact bars, and two runs side by side."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # files and pages only: no display on a server or in CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ds_benchmark.compare import Comparison  # noqa: E402
from ds_benchmark.results import Figures, Results  # noqa: E402


def _bars(ax, labels: list[str], values: list[float], cis: list[list[float] | None], color: str) -> None:
    """Bars with their 95% intervals as error bars (none where the interval is unknown)."""
    low = [v - ci[0] if ci else 0.0 for v, ci in zip(values, cis)]
    high = [ci[1] - v if ci else 0.0 for v, ci in zip(values, cis)]
    ax.bar(range(len(values)), values, yerr=[low, high], capsize=4, color=color)
    ax.set_xticks(range(len(values)), labels, rotation=20, ha="right")
    ax.axhline(0.0, color="black", linewidth=0.6)


def results_figure(results: Results) -> Figure:
    """D/s and accuracy per configuration, and the component impact table as bars when the run is an ablation."""
    panels = 3 if results.impact else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2), layout="constrained")
    names = [c.name for c in results.configurations]
    figures: list[Figures] = [c.figures for c in results.configurations]
    _bars(axes[0], names, [f.ds for f in figures], [f.ds_ci95 for f in figures], "tab:blue")
    axes[0].set_title("D/s (95% bootstrap interval)")
    _bars(axes[1], names, [f.accuracy or 0.0 for f in figures], [f.accuracy_ci95 for f in figures], "tab:green")
    axes[1].set_title("accuracy")
    if results.impact:
        _bars(axes[2], [r.component for r in results.impact], [r.ds_drop for r in results.impact],
              [r.ds_drop_ci95 for r in results.impact], "tab:red")
        axes[2].set_title("D/s drop when switched off (paired)")
    return fig


def comparison_figure(comparison: Comparison, a_name: str, b_name: str) -> Figure:
    """For each configuration both runs share: D/s and accuracy of A and B side by side."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    labels = [c.a if c.a == c.b else f"{c.a} / {c.b}" for c in comparison.configurations]
    for ax, key in zip(axes, ("ds", "accuracy")):
        x = range(len(labels))
        ax.bar([i - 0.2 for i in x], [c.a_figures[key] or 0.0 for c in comparison.configurations], 0.4, label=a_name)
        ax.bar([i + 0.2 for i in x], [c.b_figures[key] or 0.0 for c in comparison.configurations], 0.4, label=b_name)
        ax.set_xticks(list(x), labels, rotation=20, ha="right")
        ax.set_title("D/s" if key == "ds" else "accuracy")
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.legend()
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
