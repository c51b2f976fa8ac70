"""Sizing example: token hit rate against hbm capacity on a multi-agent, multi-turn trace, per policy, with and
without a dram tier below hbm. Writes the figures (JSON) and a plot (PNG).

    python tiered-kv-cache/scripts/sizing.py --out tiered-kv-cache/docs/sizing.json --plot tiered-kv-cache/docs/sizing.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tiered_kv_cache.simulate import ModelShape, SimulateConfig, simulate
from tiered_kv_cache.workload import AgentWorkload, agent_trace

HBM_BLOCKS = (128, 256, 512, 1024, 2048, 4096)
MODEL = ModelShape(n_layer=24, n_kv_head=2, head_dim=64, dtype_bytes=2)  # qwen2.5-coder-0.5b in bf16
SETUPS = {  # label -> (policy, dram blocks per hbm block)
    "lru, hbm only": ("lru", 0),
    "slru, hbm only": ("slru", 0),
    "s3fifo, hbm only": ("s3fifo", 0),
    "lru, dram 4x hbm": ("lru", 4),
    "slru, dram 4x hbm": ("slru", 4),
}


def sweep(requests: list[list[int]]) -> dict[str, list[dict]]:
    """Hit rates of every setup at every hbm size."""
    out: dict[str, list[dict]] = {}
    for label, (policy, dram) in SETUPS.items():
        for hbm in HBM_BLOCKS:
            config = SimulateConfig(capacity_blocks={"hbm": hbm, "dram": dram * hbm}, policy=policy, model=MODEL)
            result = simulate(requests, config)
            tokens = result.tokens
            out.setdefault(label, []).append({
                "hbm_blocks": hbm, "hbm_gb": round(hbm * config.block_bytes / 1e9, 3),
                "hit_rate": round(1 - tokens.miss / tokens.total, 4),
                "hbm_hit_rate": round(tokens.hit["hbm"] / tokens.total, 4)})
    return out


def plot(figures: dict[str, list[dict]], path: Path) -> None:
    """Hit rate against hbm capacity, one line per setup."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, points in figures.items():
        ax.plot([p["hbm_gb"] for p in points], [p["hit_rate"] for p in points], marker="o",
                linestyle="--" if "dram" in label else "-", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("hbm capacity for KV (GB, qwen2.5-coder-0.5b in bf16)")
    ax.set_ylabel("prompt tokens served from cache")
    ax.set_title("8 agents x 3 turns per record, 4 records in flight, 1 scan in 10 requests")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plot", type=Path, required=True)
    args = parser.parse_args()
    requests = [r["tokens"] for r in agent_trace(AgentWorkload(records=args.records))]
    figures = sweep(requests)
    args.out.write_text(json.dumps({"requests": len(requests), "figures": figures}, indent=2) + "\n")
    plot(figures, args.plot)


if __name__ == "__main__":
    main()
