"""Run one task through the five stage tools joined by pipes; show the record."""

from mimo_core.console import run_app
from unified_pipeline.cli import PIPELINE, pipeline_app

if __name__ == "__main__":
    run_app(pipeline_app, PIPELINE)
