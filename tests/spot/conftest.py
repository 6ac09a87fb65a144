from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture
def shared_spotserve() -> Path:
    path = SHARED / "spotserve"
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (clone with ../shared beside the repo)")
    return path
