"""Shared pytest fixtures: here, and in the plugin modules below, which every test module sees by name.

`tests.worlds` holds the simulated worlds (a shop, its feature build, the fitted models, the registry with
its champion); `tests.servers` the real servers a test starts (Redis, PostgreSQL-backed MLflow).
"""

from pathlib import Path

import pytest

pytest_plugins = ["tests.worlds", "tests.servers"]

# The real datasets live beside the project (../shared/data), never inside it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The folder of the real datasets; skips the test where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA}")
    return SHARED_DATA
