"""Shared fixtures. Reference data lives in ../shared (beside the checkout); tests that
need it skip when it is absent. Fixtures are tiny and made by the tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from _helpers import DATASETS, REFERENCE, gpu_available


def pytest_collection_modifyitems(config, items):
    if not gpu_available():
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU (marked gpu)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE / "official_state_dict.pkl").is_file():
        pytest.skip(f"reference data not found at {REFERENCE}")
    return REFERENCE


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    if not DATASETS.is_dir():
        pytest.skip(f"dataset metadata not found at {DATASETS}")
    return DATASETS
