"""Peak memory: a fresh process per backend (bench/run.py --memory-child), one call per T.

Only a fresh process is honest: allocator caches and ONNX Runtime's arenas of other backends
would hide or inflate the figures. ONNX Runtime / TensorRT children never import torch, so
their numbers are a deployment's.
"""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np

from .backends import Backend, ort_trt_kwargs
from .measure import say
from .models import Models
from .plan import REPO, SCRIPT, BenchPlan
from .system import MIB, PeakMemory, vm_rss

METHOD = "fresh process per backend; peak RSS during one call over the RSS after loading the model and a warm-up call"


def child_spec(b: Backend, models: Models, plan: BenchPlan, threads: int, lengths: list[int]) -> dict:
    """What a memory child needs to open backend `b` on the timed model (JSON-able)."""
    spec = {"backend": b.name, "kind": b.spec.kind, "device": b.spec.device, "threads": threads,
            "runtime_backend": b.spec.runtime_backend, "crops": plan.crops,
            "feature_dim": models.meta.feature_dim, "lengths": lengths}
    if b.spec.kind == "torch":
        spec.update(checkpoint=str(models.speed_checkpoint), preset=models.speed_preset)
    else:
        key = f"engine_{b.spec.precision}" if b.spec.kind == "trt" else b.spec.precision
        spec["model"] = str(models.speed_files[key])
        if b.spec.kind == "ort":      # the TensorRT provider's engine cache: no rebuild in the child
            spec["ort_kwargs"] = ort_trt_kwargs(b.spec, models.cache, models.trt_max)
    return spec


def memory_child(spec: dict) -> dict:
    """Runs in a fresh process: load one backend, then one call per T, peak RSS over the
    baseline after loading (and a warm-up call)."""
    out: dict[str, Any] = {"backend": spec["backend"], "rss_start_mib": vm_rss() / MIB, "cases": {}}
    device = spec["device"]
    device_free = None
    if spec["kind"] == "torch":
        import torch

        from bnwvad.checkpoint import load_model
        from bnwvad.torch_runner import TorchRunner

        torch.set_num_threads(spec["threads"])
        out["rss_imports_mib"] = vm_rss() / MIB
        runner = TorchRunner(load_model(spec["checkpoint"], preset=spec["preset"], device=device), device=device)
        if device == "cuda":
            device_free = lambda: torch.cuda.mem_get_info()[0]     # noqa: E731
    else:
        from bnwvad.runtime import load_runner

        out["rss_imports_mib"] = vm_rss() / MIB
        runner = load_runner(spec["model"], spec["runtime_backend"], strict=True, threads=spec["threads"],
                             **spec.get("ort_kwargs", {}))
        if device == "cuda":
            from bnwvad.runtime import _cuda     # the runtime's own libcudart binding: no torch here

            device_free = lambda: _cuda.mem_get_info()[0]            # noqa: E731
    out["torch_imported"] = "torch" in sys.modules
    out["rss_model_mib"] = vm_rss() / MIB
    c, d = spec["crops"], spec["feature_dim"]
    rng = np.random.default_rng(0)
    w = (rng.random((1, c, 8, d), dtype=np.float32) * 2).astype(np.float32)
    runner.run(w, np.array([8]), check=False)                       # session / allocator warm-up
    out["rss_warm_mib"] = vm_rss() / MIB
    for t in spec["lengths"]:
        x = (rng.random((1, c, t, d), dtype=np.float32) * 2).astype(np.float32)   # the caller's, not counted
        with PeakMemory(device_free=device_free) as pm:
            runner.run(x, np.array([t]), check=False)
        out["cases"][str(t)] = {"host_peak_delta_mib": pm.host_delta / MIB,
                                "device_peak_delta_mib": None if pm.device_delta is None else pm.device_delta / MIB}
        out["method"] = pm.method
        del x
    return out


def measure_memory(backends: list[Backend], models: Models, plan: BenchPlan, threads: int, skip: dict[int, str],
                   clock, timeout: float) -> dict:
    """One helper process per measured backend, in turn; the T values in `skip` are left out
    (latency found them too large for the memory available)."""
    result = {"method": METHOD, "C": plan.crops, "backends": {}}
    for b in backends:
        if not b.measured:
            continue
        spec = child_spec(b, models, plan, threads, [t for t in plan.lengths if t not in skip])
        say(f"memory: {b.name} in a fresh process (T = {spec['lengths']})", clock)
        try:
            proc = subprocess.run([sys.executable, str(SCRIPT), "--memory-child", json.dumps(spec)],
                                  capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                raise RuntimeError(f"exit {proc.returncode}: {' | '.join(tail)}")
            result["backends"][b.name] = json.loads(proc.stdout.strip().splitlines()[-1])
        except (RuntimeError, subprocess.TimeoutExpired, ValueError, IndexError) as e:
            result["backends"][b.name] = {"error": f"{type(e).__name__}: {e}"}
            say(f"  {b.name}: memory measurement failed: {e}", clock)
    return result


__all__ = ["child_spec", "measure_memory", "memory_child"]
