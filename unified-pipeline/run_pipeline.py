"""Run one task through the five stage tools joined by pipes; show the record."""

from unified_pipeline.cli import pipeline_app

if __name__ == "__main__":
    pipeline_app(prog_name="run_pipeline.py")
