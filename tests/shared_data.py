"""Paths of the dataset copies that live beside the repository (../shared/data) and of test fixtures."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def shared(relative: str) -> Path:
    """A file under ../shared/data; the test is skipped when the copies are not there."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} is not present (the shared dataset copies live next to the repository)")
    return path
