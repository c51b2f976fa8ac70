"""A private engine folder for the tests that start the real shared engine."""

import pytest

from mimo_core import daemon
from mimo_core.settings import Settings, load_settings

MODEL = "smollm2-135m"


@pytest.fixture
def engine_settings(tmp_path):
    """A factory of settings with a private engine folder that shares the real cache's model files (nothing is
    pulled twice); every engine started under them is stopped at the end of the test."""
    made: list[Settings] = []

    def make(**overrides) -> Settings:
        real_models = load_settings().cache_dir / "models"
        real_models.mkdir(parents=True, exist_ok=True)
        if not (tmp_path / "models").exists():
            (tmp_path / "models").symlink_to(real_models)
        values = {"cache_dir": tmp_path, "model": MODEL, "engine_idle_timeout_s": 120.0, **overrides}
        made.append(load_settings(overrides=values, env={}, dotenv_path=None))
        return made[-1]

    yield make
    for settings in made:
        daemon.stop_engine(settings)
