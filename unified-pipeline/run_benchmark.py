"""The D/s benchmark through the pipeline (--ablation for the component impact table)."""

from mimo_core.console import run_app
from unified_pipeline.cli import BENCHMARK, benchmark_app

if __name__ == "__main__":
    run_app(benchmark_app, BENCHMARK)
