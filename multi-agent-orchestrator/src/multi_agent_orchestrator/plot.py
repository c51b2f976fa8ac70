"""The bench's figure: accuracy, tokens and D/s against the number of agents, and a reliability diagram."""

from __future__ import annotations

from pathlib import Path

from .bench import BenchResults, BenchFigures

SERIES = (  # (name suffix, label, style)
    ("majority", "plain majority", "o-"),
    ("weighted", "confidence-weighted", "s-"),
    ("majority, early stop (replayed)", "majority + early stop (replayed)", "o:"),
    ("weighted, early stop (replayed)", "weighted + early stop (replayed)", "s:"),
    ("weighted, early stop (live)", "weighted + early stop (live)", "D"),
)


def _series(results: BenchResults, suffix: str) -> list[BenchFigures]:
    found = {f.name: f for f in results.configurations}
    return [found[f"{n} agents, {suffix}"] for n in results.setup["agents"] if f"{n} agents, {suffix}" in found]


def plot(results: BenchResults, path: Path) -> None:
    """Write the bench's figure as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = ((axes[0, 0], "accuracy", "accuracy"), (axes[0, 1], "tokens_per_task", "completion tokens per task"),
              (axes[1, 0], "ds", "D/s (difficulty-weighted decisions per second)"))
    for axis, field, title in panels:
        for suffix, name, style in SERIES:
            points = _series(results, suffix)
            if points:
                axis.plot([f.agents for f in points], [getattr(f, field) or 0.0 for f in points], style, label=name)
        axis.set_xlabel("agents")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    diagram = axes[1, 1]
    diagram.plot([0, 1], [0, 1], color="grey", linewidth=1)
    for name, bins in results.reliability.items():
        ece = next(f.calibration_error for f in results.configurations if f.name == name)
        diagram.plot([b[0] for b in bins], [b[1] for b in bins], "o-", label=f"{name} (ECE {ece:.3f})")
    diagram.set_xlabel("consensus.confidence")
    diagram.set_ylabel("accuracy")
    diagram.set_title("calibration")
    diagram.legend(fontsize=8)
    fig.suptitle(f"multi-agent-orchestrator bench: {results.setup['model']}, {results.setup['tasks']} tasks")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save(results: BenchResults, out: Path, png: Path | None) -> None:
    """Write the results JSON, and the figure beside it when asked."""
    import json

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results.to_dict(), indent=1) + "\n", encoding="utf-8")
    if png is not None:
        plot(results, png)
