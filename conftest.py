"""The fixtures every package's tests share (pytest.ini runs them all in one session): see mimo_core.testing."""

pytest_plugins = ["mimo_core.testing"]
