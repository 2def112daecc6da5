import pytest


@pytest.fixture(autouse=True)
def clean_db() -> None:
    """Unit tests touch no database: this replaces the per-test TRUNCATE of tests/conftest.py."""
