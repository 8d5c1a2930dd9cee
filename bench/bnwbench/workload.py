"""Throughput workloads: realistic video lengths and cheap stand-in videos of random features."""
from __future__ import annotations

import csv
import os
import statistics
from pathlib import Path
from typing import Sequence

import numpy as np


def read_lengths(csv_path: str | os.PathLike) -> list[tuple[str, int]]:
    """(video, snippets) rows of a test_snippets.csv (columns video, snippets, ...)."""
    path = Path(csv_path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"video", "snippets"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: columns {reader.fieldnames}; expected video, snippets, ...")
            rows = [(r["video"], int(r["snippets"])) for r in reader]
    except (OSError, KeyError) as e:
        raise ValueError(f"{path}: cannot read snippet counts ({e})") from None
    if not rows or any(n < 1 for _, n in rows):
        raise ValueError(f"{path}: expected at least one row, every snippets value >= 1")
    return rows


def builtin_lengths(count: int = 800, median: float = 128.0, q1: float = 74.0, q3: float = 240.0,
                    lo: int = 5, hi: int = 2074) -> list[tuple[str, int]]:
    """A fixed log-normal spread of video lengths (snippets) for machines without the
    dataset metadata: the median and quartiles default to XD-Violence's test set; lengths
    are the distribution's quantiles at (i + 0.5) / count, so no randomness."""
    sigma = np.log(q3 / q1) / (2 * statistics.NormalDist().inv_cdf(0.75))
    nd = statistics.NormalDist(np.log(median), sigma)
    return [(f"builtin_{i:04d}", int(np.clip(round(np.exp(nd.inv_cdf((i + 0.5) / count))), lo, hi)))
            for i in range(count)]


def spread_sample(rows: Sequence[tuple[str, int]], count: int) -> list[tuple[str, int]]:
    """`count` rows at the (i + 0.5) / count quantiles of length, in their original order:
    the length distribution in miniature (a rare extreme is in only when count is large
    enough to represent it); all rows if count >= len(rows)."""
    if count >= len(rows):
        return list(rows)
    order = sorted(range(len(rows)), key=lambda i: (rows[i][1], i))
    picks = ((np.arange(count) + 0.5) * len(rows) / count).astype(int)
    keep = sorted({order[p] for p in picks})
    return [rows[i] for i in keep]


class PoolVideo:
    """A stand-in video for throughput runs: a (C, T, D) window of one shared random pool.

    Loading costs a copy, the same for every backend; the features are non-negative and
    mostly in [0, 2), like I3D's pooled activations.
    """

    def __init__(self, name: str, length: int, crops: int, pool: np.ndarray, offset: int):
        self.name, self.length, self.crops = name, int(length), int(crops)
        self._pool, self._offset = pool, int(offset)

    def load(self) -> np.ndarray:
        return np.ascontiguousarray(self._pool[: self.crops, self._offset: self._offset + self.length])


def feature_pool(crops: int, length: int, dim: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((crops, length, dim), dtype=np.float32) * 2).astype(np.float32)


__all__ = ["PoolVideo", "builtin_lengths", "feature_pool", "read_lengths", "spread_sample"]
