import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _shared_data() -> Path | None:
    for cand in (os.environ.get("SNN_SUITE_DATA"), ROOT.parent / "shared" / "data"):
        if cand and (Path(cand) / "mnist").is_dir():
            return Path(cand)
    return None


@pytest.fixture
def shared_data() -> Path:
    """The real offline datasets (../shared/data or $SNN_SUITE_DATA); skips where absent."""
    path = _shared_data()
    if path is None:
        pytest.skip("real datasets not found: set SNN_SUITE_DATA or provide ../shared/data")
    return path


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def host():
    from suite.host import create_host

    return create_host()
