"""The real embedded engine for the end-to-end tests: smollm2-135m."""

import pytest

from mimo_core import daemon
from mimo_core.settings import load_settings

MODEL = "smollm2-135m"


@pytest.fixture(scope="session")
def engine_settings(tmp_path_factory):
    """Settings with a private engine folder that shares the real cache's model files (nothing is pulled twice);
    the engine started under them is stopped at the end of the session."""
    folder = tmp_path_factory.mktemp("engine")
    real_models = load_settings().cache_dir / "models"
    real_models.mkdir(parents=True, exist_ok=True)
    (folder / "models").symlink_to(real_models)
    settings = load_settings(overrides={"cache_dir": folder, "model": MODEL, "draft_model": MODEL,
                                        "concurrency": 8, "engine_idle_timeout_s": 300.0}, env={}, dotenv_path=None)
    yield settings
    daemon.stop_engine(settings)
