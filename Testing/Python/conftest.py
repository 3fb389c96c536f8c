"""Shared pytest fixtures: where the real data lies, a seeded RNG, and a temporary folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` next to the repository (real CT, DICOM, RTSTRUCT; see its README)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data missing: {SHARED_DATA} (the shared/ folder must sit beside the repository)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test runs torch on one thread (and restores the setting): results and timings do not depend
    on how many cores the machine has or on what else runs on it."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded random generator, so that every test is reproducible."""
    return np.random.default_rng(1234)
