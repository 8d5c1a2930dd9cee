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
    """An NVIDIA GPU is usable: torch sees CUDA, or (torch-free deployments) nvidia-smi does."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        return True
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def devices() -> list:
    """CPU always; CUDA too where present (the same tests run unchanged on it)."""
    out = ["cpu"]
    try:
        import torch
        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if cuda:
        out.append(pytest.param("cuda", marks=pytest.mark.gpu))
    return out
