"""Compare two benchmark results files, paired by task."""

from mimo_core.console import run_app
from unified_pipeline.cli import COMPARE, compare_app

if __name__ == "__main__":
    run_app(compare_app, COMPARE)
