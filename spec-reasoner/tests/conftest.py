"""The real embedded engine for the end-to-end tests: smollm2-135m as both draft and oracle."""

import pytest

from mimo_core import daemon
from mimo_core.testing import private_engine_settings


@pytest.fixture(scope="session")
def engine_settings(tmp_path_factory):
    """A private engine on the real models for the whole session, stopped at its end."""
    settings = private_engine_settings(tmp_path_factory.mktemp("engine"))
    yield settings
    daemon.stop_engine(settings)
