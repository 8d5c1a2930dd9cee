"""Helpers shared by the tests (importable because setup.cfg puts tests/ on pythonpath)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BNWVAD_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"
DATASETS = SHARED / "datasets"


def gpu_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def devices() -> list:
    """CPU always; CUDA too where present (the same tests run unchanged on it)."""
    out = ["cpu"]
    if gpu_available():
        out.append(pytest.param("cuda", marks=pytest.mark.gpu))
    return out
