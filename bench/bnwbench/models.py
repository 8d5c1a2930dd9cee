"""The two models of a run and their files: the timed (paper-size) model and the demo model
whose AUC/AP the backends must keep; exported graphs and TensorRT engines, cached.

The demo set and model are prepared in a helper process (`demo_child`, bench/run.py
--demo-child) while the main process exports graphs and opens the backends.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .measure import say
from .plan import PUBLISHED, REPO, SCRIPT, BenchError


@dataclass
class Models:
    speed: Any                      # BNWVAD, paper size
    speed_source: dict
    speed_checkpoint: Path          # what a memory child loads
    speed_preset: str | None
    speed_files: dict[str, Path]    # precision -> .onnx ; "engine_<precision>" -> engine
    meta: Any                       # runtime ModelMeta of the speed model
    demo: Any = None
    demo_source: dict = field(default_factory=dict)
    demo_files: dict[str, Path] = field(default_factory=dict)
    cache: Path = Path(".")
    trt_max: tuple[int, int, int] = (4, 10, 4096)


def load_speed_model(checkpoint: Path | None, preset: str | None, work: Path, seed: int):
    """(model, description, checkpoint path for children, preset)."""
    import torch

    from bnwvad.checkpoint import load_model, save_checkpoint
    from bnwvad.config import ModelConfig
    from bnwvad.model import BNWVAD

    if checkpoint is not None:
        return (load_model(checkpoint, preset=preset),
                {"kind": "checkpoint", "path": str(checkpoint), "preset": preset}, Path(checkpoint), preset)
    if PUBLISHED.is_file():
        return (load_model(PUBLISHED, preset="xd"),
                {"kind": "published XD-Violence weights", "path": str(PUBLISHED), "preset": "xd"}, PUBLISHED, "xd")
    torch.manual_seed(seed)
    model = BNWVAD(ModelConfig()).eval()
    path = work / "speed_random.pt"
    save_checkpoint(path, model)
    return (model, {"kind": f"paper-size architecture, random weights (seed {seed}); {PUBLISHED} not found",
                    "path": None, "preset": None}, path, None)


def export_graphs(model, precisions, cache: Path, prefix: str, preset: str | None, clock) -> dict[str, Path]:
    """The model exported once per precision, kept in `cache` under a key of everything the
    graph depends on (weights, precision, preset, the exporter's source files, bnwvad's
    version), so a rerun skips the seconds an export takes and a changed exporter re-exports.
    No export-time verification: this benchmark compares every backend with PyTorch itself,
    on more inputs."""
    import bnwvad.export as export_pkg
    from bnwvad._version import __version__
    from bnwvad.export import export_onnx
    from bnwvad.export.metadata import weights_digest

    src = hashlib.sha256()
    for f in sorted(Path(export_pkg.__file__).parent.glob("*.py")):
        src.update(f.name.encode() + f.read_bytes())
    base = json.dumps({"weights": weights_digest(model.state_dict()), "preset": preset, "exporter": src.hexdigest(),
                       "version": __version__}, sort_keys=True)
    out = {}
    for p in precisions:
        key = hashlib.sha256(f"{base}|{p}".encode()).hexdigest()[:16]
        path = cache / "graphs" / f"{prefix}_{p}_{key}.onnx"
        if not path.is_file():
            say(f"exporting the {prefix} model ({p})", clock)
            export_onnx(model, path, preset=preset, precision=p, verify=False)    # atomic: never half a file
            if prefix == "speed":     # one timed model at a time: older exports of it are dead weight
                for old in path.parent.glob(f"{prefix}_{p}_*.onnx"):
                    if old != path:
                        old.unlink(missing_ok=True)
        out[p] = path
    return out


def engine_for(onnx_path: Path, profile: tuple, cache: Path, clock) -> Path:
    """A TensorRT engine of `onnx_path` for the (N, C, T) profile (min, opt, max), built once
    per graph, profile, TensorRT version and GPU and kept in `cache` with its sidecar: builds
    take minutes, and a GPU is lent for minutes. The timing cache is shared by all builds."""
    import tensorrt as trt
    import torch

    from bnwvad.export import Profile, build_engine

    gpu = torch.cuda.get_device_name(0)
    key = hashlib.sha256(json.dumps([onnx_path.name, profile, trt.__version__, gpu]).encode()).hexdigest()[:16]
    engine = cache / "engines" / f"{onnx_path.stem}_{key}.engine"
    if engine.is_file() and engine.with_name(engine.name + ".json").is_file():
        return engine
    say(f"building a TensorRT engine of {onnx_path.name}, profile N,C,T min/opt/max {profile} (minutes)", clock)
    build_engine(onnx_path, engine, profile=Profile(*profile), timing_cache=cache / "trt.timing.cache",
                 verify=False, log=lambda m: say(m, clock))     # verified by the bench against PyTorch, on more inputs
    return engine


def prepare_demo_files(models: Models, backends, cache: Path, clock) -> None:
    """The demo model's graphs (and engines) for every measured backend that needs one."""
    live = [b for b in backends if b.measured]
    precisions = sorted({b.spec.precision for b in live if b.spec.kind != "torch"})
    models.demo_files = export_graphs(models.demo, precisions, cache, "demo", None, clock)
    for b in live:
        if b.spec.kind == "trt" and f"engine_{b.spec.precision}" not in models.demo_files:
            models.demo_files[f"engine_{b.spec.precision}"] = engine_for(
                models.demo_files[b.spec.precision], ((1, 1, 1), (4, 5, 256), (8, 5, 512)), cache, clock)


# --------------------------------------------------------------------------------------
# The demo set and model, in a helper process
# --------------------------------------------------------------------------------------
def demo_cache_key(manifest: dict, steps: int) -> str:
    from bnwvad._version import __version__
    from bnwvad.demo import DEMO_MODEL, DEMO_TRAIN

    blob = json.dumps({"manifest": manifest, "model": DEMO_MODEL, "train": {**DEMO_TRAIN, "iterations": steps},
                       "version": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def demo_child(spec: dict) -> dict:
    """In a separate process, beside the exports: the demo set (generated when missing) and,
    without --checkpoint, the demo model (trained when not cached)."""
    from bnwvad.demo import generate_demo, read_manifest

    root = generate_demo(Path(spec["root"]))
    out = {"root": str(root)}
    if spec.get("steps"):
        cache, steps = Path(spec["cache"]), int(spec["steps"])
        # --quick trains briefly, but a model of the full recipe already in the cache is better.
        for s in [*spec.get("prefer_steps", []), steps]:
            ckpt = cache / f"demo-model-{demo_cache_key(read_manifest(root), s)}" / "last.pt"
            if ckpt.is_file():
                return {**out, "checkpoint": str(ckpt), "reused": True, "steps": s}
        ckpt, reused = train_demo_model(root, steps, cache, None)
        out.update(checkpoint=str(ckpt), reused=reused, steps=steps)
    return out


def start_demo_child(root: Path, steps: int | None, cache: Path, prefer_steps: list[int]) -> subprocess.Popen:
    spec = json.dumps({"root": str(Path(root).resolve()), "steps": steps, "cache": str(cache.resolve()),
                       "prefer_steps": prefer_steps})
    # stderr is inherited: its progress and any error appear in this run's log.
    return subprocess.Popen([sys.executable, str(SCRIPT), "--demo-child", spec],
                            stdout=subprocess.PIPE, text=True, cwd=str(REPO))


def finish_demo_child(proc: subprocess.Popen) -> dict:
    stdout, _ = proc.communicate()
    if proc.returncode != 0:
        raise BenchError(f"preparing the demo set / model failed (exit {proc.returncode}; its message is above)")
    return json.loads(stdout.strip().splitlines()[-1])


def load_demo_model(models: Models, checkpoint: Path | None, prepared: dict, test) -> None:
    """models.demo: --checkpoint, else the helper process's model; it must take the demo
    set's features."""
    from bnwvad.checkpoint import CheckpointError, load_model
    from bnwvad.features import load_video

    if checkpoint is not None:
        try:
            models.demo = load_model(checkpoint)
        except CheckpointError as e:
            raise BenchError(f"--checkpoint: {e}. It must be a bnwvad checkpoint trained on the demo "
                             f"set (e.g. the best.pt of a bnwvad-train run on demo_data)") from None
        models.demo_source = {"kind": f"checkpoint {checkpoint}", "path": str(checkpoint)}
    else:
        models.demo = load_model(prepared["checkpoint"])
        models.demo_source = {"kind": f"demo recipe, {prepared['steps']} training steps, seed 0 (last.pt)",
                              "path": prepared["checkpoint"], "reused_from_cache": prepared["reused"]}
    have = load_video(test.videos[0]).shape[-1]
    if have != models.demo.config.feature_dim:
        raise BenchError(f"{checkpoint}: the model takes D = {models.demo.config.feature_dim} "
                         f"features but the demo set at {prepared['root']} has D = {have}; --checkpoint must "
                         f"be a model trained on the demo features (e.g. bnwvad-train's best.pt)")


def train_demo_model(root: Path, steps: int, cache: Path, clock) -> tuple[Path, bool]:
    """A deterministic short training with the demo recipe; (checkpoint, reused from cache).

    1 thread: reproducible bit for bit on any CPU count, and faster for this small model
    on a busy machine than 2 threads waiting on each other."""
    import torch

    from bnwvad.config import ModelConfig, TrainConfig
    from bnwvad.data import LoaderConfig
    from bnwvad.demo import DEMO_MODEL, DEMO_TRAIN, read_manifest
    from bnwvad.train import DataSpec, RunConfig, train

    manifest = read_manifest(root)
    if manifest is None:
        raise BenchError(f"{root}: no demo manifest; expected a demo set written by bnwvad.demo")
    final = cache / f"demo-model-{demo_cache_key(manifest, steps)}"
    if (final / "last.pt").is_file():
        return final / "last.pt", True
    say(f"demo model: training {steps} steps of the demo recipe on 1 thread, in a helper process (cached for "
        f"later runs)", clock)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-model-", dir=cache))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        dim = int(manifest["spec"]["feature_dim"])
        train(ModelConfig(feature_dim=dim, **DEMO_MODEL),
              TrainConfig(**{**DEMO_TRAIN, "iterations": steps, "eval_every": steps}),
              DataSpec("demo", root / "list" / "XD_Train.list", root=root),
              RunConfig(tmp / "run", device="cpu", progress=False, loader=LoaderConfig(workers=1)))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp / "run", final)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)
    return final / "last.pt", False


__all__ = ["Models", "demo_cache_key", "demo_child", "engine_for", "export_graphs", "finish_demo_child",
           "load_demo_model", "load_speed_model", "prepare_demo_files", "start_demo_child", "train_demo_model"]
