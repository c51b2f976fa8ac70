"""The package's private engine (mimo_core.testing), with room for several records of agents at once."""

import dataclasses

import pytest


@pytest.fixture(scope="module")
def engine_settings(engine_settings):
    """The private engine's settings with MIMO_CONCURRENCY 8: a stage test runs records of 3 agents two at a
    time."""
    return dataclasses.replace(engine_settings, concurrency=8)
