"""For the test suites of every package: settings for a private embedded engine on the real models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .settings import Settings, load_settings

TEST_MODEL = "smollm2-135m"  # the model every end-to-end test runs


def private_engine_settings(folder: Path, **overrides: Any) -> Settings:
    """Settings whose engine state lives in `folder` while the model files are the real cache's (nothing is pulled
    twice); oracle and draft are TEST_MODEL unless `overrides` say otherwise. The caller stops the engine."""
    folder = load_settings().with_cache_dir(folder).cache_dir
    values = {"cache_dir": folder, "model": TEST_MODEL, "draft_model": TEST_MODEL, "engine_idle_timeout_s": 300.0,
              **overrides}
    return load_settings(overrides=values, env={}, dotenv_path=None)


def fresh_calibrations(settings: Settings) -> Settings:
    """The settings with a calibrations folder of their own, empty (private engines otherwise share the real
    cache's), so that a test sees what a first run measures."""
    folder = settings.cache_dir / "calibrations"
    if folder.is_symlink():
        folder.unlink()
    folder.mkdir(exist_ok=True)
    for kept in folder.iterdir():
        kept.unlink()
    return settings
