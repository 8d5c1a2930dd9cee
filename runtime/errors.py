"""The runtime's exceptions. Every message names what was received, what was expected and the fix.

File-level problems (missing, corrupted, truncated, pickled, wrong shape/dtype, NaN) are
`bnwvad.features.FeatureFileError`, shared with training; these are the runtime's own.
"""
from __future__ import annotations


class RuntimeFailure(Exception):
    """Base class of the errors raised by bnwvad.runtime."""


class ModelLoadError(RuntimeFailure):
    """The model file (ONNX, or TensorRT engine + sidecar) cannot be loaded or lacks metadata."""


class BackendError(RuntimeFailure):
    """The requested backend is not available, or (strict) did not end up running the model."""


class InputError(RuntimeFailure, ValueError):
    """Arrays handed to a runner or scorer do not match the model's metadata."""


class MemoryBudgetError(RuntimeFailure, MemoryError):
    """One crop of one video needs more working memory than the budget allows."""

    def __init__(self, message: str, *, needed: int, budget: int):
        super().__init__(message)
        self.needed = int(needed)
        self.budget = int(budget)


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (binary units, as the --memory-budget option reads them)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - unreachable


def parse_bytes(text: str) -> int:
    """'2GiB', '1.5 GB', '500M', '123456' -> bytes.

    K, M, G, T and KiB, MiB, GiB, TiB are binary (1024-based); KB, MB, GB, TB are decimal.
    """
    s = str(text).strip().replace(" ", "")
    units = {"": 1, "B": 1,
             "K": 1024, "KI": 1024, "KIB": 1024, "KB": 1000,
             "M": 1024 ** 2, "MI": 1024 ** 2, "MIB": 1024 ** 2, "MB": 1000 ** 2,
             "G": 1024 ** 3, "GI": 1024 ** 3, "GIB": 1024 ** 3, "GB": 1000 ** 3,
             "T": 1024 ** 4, "TI": 1024 ** 4, "TIB": 1024 ** 4, "TB": 1000 ** 4}
    i = len(s)
    while i > 0 and s[i - 1].isalpha():
        i -= 1
    num, unit = s[:i], s[i:].upper()
    try:
        value = float(num)
    except ValueError:
        value = -1.0
    if unit not in units or value <= 0:
        raise ValueError(f"memory size {text!r}: expected a positive number with an optional unit "
                         f"(B, KiB, MiB, GiB, TiB; KB/MB/GB are 1000-based), e.g. 2GiB")
    return int(value * units[unit])
