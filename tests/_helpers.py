"""Helpers shared by the tests (importable because setup.cfg puts tests/ on pythonpath)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
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


# Python source that makes `import torch` fail in this interpreter as if torch were not installed
# (sys.modules stays clean, so libraries that merely look for an imported torch are not
# confused), and checks that it does. Prepend it to a `python -c` script.
NO_TORCH = """
import importlib, importlib.abc, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, _NoTorch())
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit("the torch blocker failed")
"""

# Runs `main(argv)` of the module named by argv[1] with the rest of argv, then fails if torch
# was imported, and says "NO-TORCH-OK <exit code>" on stderr (stdout stays the command's).
_NO_TORCH_MAIN = NO_TORCH + """
main = importlib.import_module(sys.argv[1]).main
try:
    main(sys.argv[2:])
    code = 0
except SystemExit as e:
    code = e.code
leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not leaked, leaked
print("NO-TORCH-OK", code, file=sys.stderr)
raise SystemExit(code)
"""


def run_without_torch(module: str, *args, **kwargs) -> subprocess.CompletedProcess:
    """`module`'s click command run in a fresh interpreter where torch cannot be imported
    (capture_output=True; other keywords go to subprocess.run)."""
    return subprocess.run([sys.executable, "-c", _NO_TORCH_MAIN, module, *map(str, args)], capture_output=True,
                          **kwargs)


def run_bench_quick(script: Path, folder: Path, *args, timeout: int = 1200):
    """`python bench/<script> --quick --out <folder>/results ARGS` in `folder`; fails the test
    unless it exits 0. Returns (the finished process, the results folder, report.json loaded)."""
    out = folder / "results"
    proc = subprocess.run([sys.executable, str(script), "--quick", "--out", str(out), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=str(folder),
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out, json.loads((out / "report.json").read_text())
