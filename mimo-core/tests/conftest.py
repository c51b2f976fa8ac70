"""A private engine folder for the tests that start the real shared engine."""

import pytest

from mimo_core import daemon
from mimo_core.settings import Settings
from mimo_core.testing import private_engine_settings


@pytest.fixture
def engine_settings(tmp_path):
    """A factory of private-engine settings (see `private_engine_settings`); every engine started under them is
    stopped at the end of the test."""
    made: list[Settings] = []

    def make(**overrides) -> Settings:
        made.append(private_engine_settings(tmp_path, **{"engine_idle_timeout_s": 120.0, **overrides}))
        return made[-1]

    yield make
    for settings in made:
        daemon.stop_engine(settings)
