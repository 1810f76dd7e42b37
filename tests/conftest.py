"""Shared test fixtures.

Real data sets live in ``../shared/data`` beside the checkout (never copied into
the project). Tests that need them take the ``shared_data`` fixture, which
skips with a reason on a machine without that folder (a user's fresh clone).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DROPKIT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATA} (set DROPKIT_SHARED_DATA)")
    return SHARED_DATA


def require_shared(*parts: str) -> Path:
    """Path to ``shared/data/<parts>``, skipping the calling test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (real data sets live in ../shared/data)")
    return path
