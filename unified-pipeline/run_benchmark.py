"""The D/s benchmark through the pipeline (--ablation for the component impact table)."""

from unified_pipeline.cli import benchmark_app

if __name__ == "__main__":
    benchmark_app(prog_name="run_benchmark.py")
