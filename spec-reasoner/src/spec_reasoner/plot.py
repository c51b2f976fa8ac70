"""The bench's figure: speedup over oracle-only and accuracy, per arm and pairing, with 95% intervals."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI
import matplotlib.pyplot as plt  # noqa: E402

from .bench import Bench  # noqa: E402


def plot(bench: Bench, path: Path) -> None:
    """Two panels (speedup, accuracy), one group of bars per pairing, one bar per arm, error bars the CIs."""
    pairings = list(dict.fromkeys(a.pairing for a in bench.arms))
    names = list(dict.fromkeys(a.arm for a in bench.arms))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(names), 1)
    panels = [("speedup", "speedup_ci95", "speedup vs oracle-only (x)"), ("accuracy", "accuracy_ci95", "accuracy")]
    for ax, (key, ci, label) in zip(axes, panels):
        for j, name in enumerate(names):
            arms = [next((a for a in bench.arms if a.pairing == p and a.arm == name), None) for p in pairings]
            xs = [i + j * width for i, a in enumerate(arms) if a is not None]
            values = [getattr(a, key) for a in arms if a is not None]
            errors = [[max(0.0, v - getattr(a, ci)[0]) for v, a in zip(values, filter(None, arms))],
                      [max(0.0, getattr(a, ci)[1] - v) for v, a in zip(values, filter(None, arms))]]
            ax.bar(xs, values, width, yerr=errors, capsize=3, label=name)
        ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(pairings))], pairings, fontsize=8)
        ax.set_ylabel(label)
        if key == "speedup":
            ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"spec-reasoner bench: {bench.config.get('n')} records, domains {' '.join(bench.config['domains'])}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
