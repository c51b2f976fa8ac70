"""Compare two benchmark results files, paired by task."""

from unified_pipeline.cli import compare_app

if __name__ == "__main__":
    compare_app(prog_name="compare_benchmarks.py")
