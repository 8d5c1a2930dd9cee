"""What a bench run measures: its paths, the constants the phases share, and BenchPlan."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bnwvad.runtime.contract import OUTPUTS

from .measure import QuietGate

BENCH = Path(__file__).resolve().parents[1]
REPO = BENCH.parent
# The command users run; the run's helper processes are this script too (hidden options).
SCRIPT = BENCH / "run.py"
SHARED = Path(os.environ.get("BNWVAD_SHARED", REPO.parent / "shared"))
PUBLISHED = SHARED / "reference" / "official_state_dict.pkl"
XD_LENGTHS = SHARED / "datasets" / "xd-violence" / "test_snippets.csv"
DEFAULT_OUT = BENCH / "results"
SCHEMA = "bnwvad-bench/1"
HEADLINE_T = 200
# Other processes' share of the CPUs above which a run is flagged as measured on a busy machine.
BUSY_SHARE = 0.05
# Rounds (or throughput groups) under BUSY_SHARE needed before their own medians are reported.
MIN_CLEAN = 3
# --quick's demo model: 100 steps of the demo recipe reach an AUC clearly above chance (62% on
# demo set v2; the full recipe's 300 steps reach 84%) in seconds.
QUICK_DEMO_STEPS = 100
REFERENCE = "torch_eager"
PEAK = "peak:matmul"
PEAK_CUDA = "peak:matmul_cuda"
LIBRARIES = ("bnwvad", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "numpy",
             "scikit-learn", "matplotlib", "click")


class BenchError(Exception):
    """A bench run cannot go on (bad --checkpoint, a helper process failed); the CLI prints it."""


@dataclass
class BenchPlan:
    """How much of everything a mode (quick or full) measures."""

    lengths: list[int]
    crops: int
    rounds: Callable[[int], dict]        # T -> interleaved_rounds kwargs
    workload_videos: int
    workload_group: int
    workload_crops: int
    gate: QuietGate
    demo_steps: int | None
    demo_videos: int | None
    memory: bool


def quick_rounds(t: int) -> dict:
    return {"warmup": 0, "min_rounds": 5, "max_rounds": 9, "budget_s": 2.0 if t < HEADLINE_T else 4.0}


def full_rounds(t: int) -> dict:
    if t <= 256:
        return {"warmup": 1, "min_rounds": 10, "max_rounds": 30, "budget_s": 20.0}
    if t <= 1024:
        return {"warmup": 0, "min_rounds": 5, "max_rounds": 10, "budget_s": 30.0}
    # A call takes seconds here: the accuracy call is the warm-up, three rounds the sample.
    return {"warmup": 0, "min_rounds": 3, "max_rounds": 5, "budget_s": 60.0}


__all__ = ["BENCH", "BUSY_SHARE", "BenchError", "BenchPlan", "DEFAULT_OUT", "HEADLINE_T", "LIBRARIES", "MIN_CLEAN",
           "OUTPUTS", "PEAK", "PEAK_CUDA", "PUBLISHED", "QUICK_DEMO_STEPS", "REFERENCE", "REPO", "SCHEMA", "SCRIPT",
           "SHARED", "XD_LENGTHS", "full_rounds", "quick_rounds"]
