"""A built-in demo dataset: synthetic I3D-like features in the real XD-Violence layout.

`generate_demo(root)` writes, deterministically from a seed,

    root/list/XD_Train.list      train/<video>__<k>.npy, violent videos first, then normal
    root/list/XD_Test.list       test/<video>__<k>.npy
    root/XD_Annotation.txt       <video> s1 e1 [s2 e2 ...]   (frames, 16 per snippet)
    root/test_snippets.csv       video,snippets,anomalous_frames (as in shared/datasets)
    root/train/, root/test/      one float32 (T, D) .npy per crop
    root/demo_manifest.json      generator version + parameters (makes generation idempotent)

so training and evaluation read it through exactly the code real data takes. Names follow
XD-Violence: `demo.train.0007__#1_label_A` (normal), `..._label_B1-0-0` (fighting), and
multi-class `..._label_B2-G-0`.

How the features are made (all per snippet, D dims, then ReLU so they are non-negative
like I3D's pooled activations):

    z_t = m + S_v + U_n a_t + A_t + Q_t + eps_t ;   x_t = max(z_t, 0) per crop view

- m: a global mean profile (positive, like I3D channel means).
- S_v: a per-video scene component (constant in time) in an 8-d scene subspace.
- U_n a_t: normal activity: temporally smooth (Gaussian-filtered noise) coefficients in a
  16-d high-variance subspace: most of the variance of normal video.
- A_t: anomalies. Each class has its own signature in directions of LOW normal variance
  (orthogonal to the scene and activity subspaces), so an outlier measure that whitens
  the normal variation (the Mahalanobis DFM) sees them while Euclidean distance is
  dominated by normal activity. Signatures vary per instance (a random mix of the class
  direction and a shared "generic anomaly" direction), and with the paper's Fig. 1 spread
  of abnormality ratios, from a few percent (shooting bursts, subtle abuse) to most of a
  video (riot), with temporal patterns per class (bursts, intermittent fights, an
  explosion's strong onset followed by a long, weaker aftermath in another direction).
- Q_t: distractors: "normal but unusual" events (a crowd cheering, a camera pan) in
  normal AND abnormal videos, also in low-variance directions and partly aligned with the
  anomaly signatures: unusual is not anomalous, and only the weak video-level labels can
  tell the model so.
- Crops: C perturbed views of the same video (a per-crop gain, offset and noise), like
  I3D's 5/10-crop features.
- Test videos have variable lengths (24..300 snippets); annotations are frame indices
  with a few frames of jitter around snippet boundaries, as human annotations have.

Sizes are chosen so generation takes seconds and the default `bnwvad-train` run finishes
in a few minutes on 2 CPU cores.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import PRESETS

GENERATOR_VERSION = 2
MANIFEST = "demo_manifest.json"
FRAMES_PER_SNIPPET = 16
DEFAULT_ROOT = "demo_data"


@dataclass(frozen=True)
class DemoSpec:
    """Everything that determines the generated files (stored in the manifest)."""

    seed: int = 0
    feature_dim: int = 128
    crops: int = 5
    train_normal: int = 160
    train_abnormal: int = 160
    test_normal: int = 40
    test_abnormal: int = 60
    train_length: tuple[int, int] = (24, 240)
    test_length: tuple[int, int] = (24, 300)
    scene_dims: int = 8
    activity_dims: int = 16
    anomaly_strength: float = 1.0      # scales every anomaly signature (lower = harder)
    distractor_rate: float = 0.5       # fraction of videos with distractor events

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["train_length"] = list(self.train_length)
        d["test_length"] = list(self.test_length)
        return d


# Classes: XD letter -> (name, ratio range, amplitude, temporal pattern, phase gains).
# Ratios follow the paper's Fig. 1 / Fig. 10 spread: shootings and car accidents short,
# riots most of a video. A class with several phases moves through them in order during an
# event, each phase with its own signature direction and a decreasing gain: a riot's crowd
# gathering, clashes and fires; an explosion's blast and its long smoke; a crash and its
# aftermath. Selecting only the top 20% of each video (SLS) sees a long event's strongest
# phase; selecting over the batch (BLS, SBS) also reaches its weaker phases.
CLASSES: dict[str, tuple[str, tuple[float, float], float, str, tuple[float, ...]]] = {
    "B1": ("fighting", (0.15, 0.6), 0.9, "intermittent", (1.0, 0.6)),
    "B2": ("shooting", (0.03, 0.12), 1.2, "bursts", (1.0,)),
    "B4": ("riot", (0.6, 0.97), 0.8, "sustained", (1.0, 0.6, 0.45)),
    "B5": ("abuse", (0.05, 0.25), 0.5, "sustained", (1.0,)),
    "B6": ("car accident", (0.04, 0.3), 1.1, "onset", (1.4, 0.45)),
    "G": ("explosion", (0.1, 0.7), 1.3, "onset", (1.4, 0.5)),
}


class DemoError(ValueError):
    """The demo root cannot be used (e.g. it holds something that is not a demo set)."""


# -- the synthetic "world": shared bases -------------------------------------------------
@dataclass
class _World:
    mean: np.ndarray            # (D,)
    scene: np.ndarray           # (S, D) orthonormal rows
    activity: np.ndarray        # (K, D) orthonormal rows, scaled by their std below
    activity_std: np.ndarray    # (K,)
    signature: dict[str, np.ndarray]    # class -> (phases, D) unit rows, low-variance directions
    generic: np.ndarray         # (D,) a direction every anomaly shares a little of
    distractors: np.ndarray     # (Q, D) unit rows


def _world(spec: DemoSpec) -> _World:
    rng = np.random.default_rng([spec.seed, 0xD3A0])
    d = spec.feature_dim
    n_sig = sum(len(c[4]) for c in CLASSES.values()) + 3 + 1   # phases, distractors, generic
    k = spec.scene_dims + spec.activity_dims + n_sig
    if k > d:
        raise ValueError(f"feature_dim={d} is too small for {k} independent directions")
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    basis = q.T                                                   # (D, D) orthonormal rows
    scene = basis[:spec.scene_dims]
    activity = basis[spec.scene_dims:spec.scene_dims + spec.activity_dims]
    low = list(basis[spec.scene_dims + spec.activity_dims:])     # low-variance directions
    generic = low.pop(0)
    signature = {}
    for c, (*_, gains) in CLASSES.items():
        signature[c] = np.stack([low.pop(0) for _ in gains])
    dis = np.stack([low.pop(0) for _ in range(3)])
    # Distractors partly share anomaly directions (cos ~ 0.45): unusual is not anomalous.
    dis[0] = 0.9 * dis[0] + 0.45 * signature["B1"][0]
    dis[1] = 0.9 * dis[1] + 0.45 * signature["B4"][1]
    dis[2] = 0.9 * dis[2] + 0.45 * generic
    dis /= np.linalg.norm(dis, axis=1, keepdims=True)
    mean = np.abs(rng.normal(0.45, 0.2, d)) + 0.05
    activity_std = np.linspace(0.9, 0.3, spec.activity_dims)
    return _World(mean, scene, activity, activity_std, signature, generic, dis)


def _smooth(rng: np.random.Generator, length: int, dims: int, width: float) -> np.ndarray:
    """(length, dims) zero-mean, ~unit-std noise, Gaussian-filtered in time (std `width`).

    Filtered in the frequency domain with circular padding (cheap for every dim at once).
    """
    pad = int(4 * width) + 1
    n = length + 2 * pad
    noise = rng.standard_normal((n, dims))
    t = np.minimum(np.arange(n), n - np.arange(n))                 # circular distance
    w = np.exp(-0.5 * (t / width) ** 2)
    w /= np.sqrt((w ** 2).sum())
    out = np.fft.irfft(np.fft.rfft(noise, axis=0) * np.fft.rfft(w)[:, None], n=n, axis=0)
    return out[pad:pad + length]


def _envelope(length: int, start: int, end: int, ramp: float = 1.0) -> np.ndarray:
    """Smooth on/off envelope (length,) that is ~1 on [start, end) and ~0 outside."""
    t = np.arange(length) + 0.5
    return 1.0 / (1 + np.exp(-(t - start) / ramp)) * 1.0 / (1 + np.exp((t - end) / ramp))


def _place(rng: np.random.Generator, length: int, total: int, pieces: int) -> list[tuple[int, int]]:
    """`pieces` disjoint intervals covering about `total` snippets of [0, length)."""
    pieces = max(1, min(pieces, total))
    sizes = np.maximum(1, np.round(rng.dirichlet(np.ones(pieces)) * total)).astype(int)
    free = length - int(sizes.sum())
    if free < 0:
        return [(0, length)]
    gaps = np.round(rng.dirichlet(np.ones(pieces + 1)) * free).astype(int)
    out, pos = [], int(gaps[0])
    for s, g in zip(sizes, gaps[1:]):
        out.append((pos, min(length, pos + int(s))))
        pos += int(s) + int(g)
    return [(a, b) for a, b in out if b > a]


def _anomaly(rng: np.random.Generator, world: _World, spec: DemoSpec, cls: str,
             length: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(length, D) anomaly component of one class and its events (snippet intervals)."""
    _, (lo, hi), amp, pattern, gains = CLASSES[cls]
    ratio = rng.uniform(lo, hi)
    total = max(1, int(round(ratio * length)))
    d = spec.feature_dim
    comp = np.zeros((length, d))
    amp = amp * spec.anomaly_strength * rng.uniform(0.7, 1.3)
    # Per-instance signature of each phase: the class's phase direction, some generic
    # anomaly, a random tilt (instances of a class differ), length 2.
    tilt = rng.standard_normal(d)
    tilt -= world.activity.T @ (world.activity @ tilt) + world.scene.T @ (world.scene @ tilt)
    tilt /= np.linalg.norm(tilt)
    sigs = world.signature[cls] + 0.35 * world.generic + 0.3 * tilt
    sigs *= 2.0 / np.linalg.norm(sigs, axis=1, keepdims=True)
    if pattern == "bursts":
        events = _place(rng, length, total, int(rng.integers(1, 4)))
    elif pattern == "intermittent":
        events = _place(rng, length, total, int(rng.integers(1, 3)))
    else:
        events = _place(rng, length, total, 1)
    for s, e in events:
        # Phases in order; an onset is short (a quarter of the event), other phases share it.
        n = len(gains)
        if pattern == "onset":
            cuts = [s, s + max(1, int(round(0.25 * (e - s)))), e]
        else:
            w = rng.dirichlet(np.full(n, 3.0))
            cuts = [s] + [s + int(round(c)) for c in np.cumsum(w)[:-1] * (e - s)] + [e]
        for k, gain in enumerate(gains):
            a, b = cuts[k], cuts[k + 1]
            if b <= a:
                continue
            env = _envelope(length, a, b, ramp=0.5 if k == 0 else 1.0)
            if pattern == "intermittent":      # fights come and go within an event
                env = env * (0.65 + 0.35 * np.sin(np.arange(length) / rng.uniform(1.5, 3.0)))
            comp += np.outer(env, sigs[k]) * amp * gain
    return comp, events


def _video(rng: np.random.Generator, world: _World, spec: DemoSpec, length: int,
           classes: tuple[str, ...]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(C, length, D) float32 crops of one video and its anomalous snippet intervals."""
    d = spec.feature_dim
    scene = (rng.standard_normal(spec.scene_dims) * 0.8) @ world.scene
    level = rng.uniform(0.6, 1.4)                                 # how busy this scene is
    act = _smooth(rng, length, spec.activity_dims, rng.uniform(1.5, 4.0))
    z = world.mean + scene + level * (act * world.activity_std) @ world.activity
    z = z + 0.06 * _smooth(rng, length, d, 1.0)                   # small isotropic texture
    events: list[tuple[int, int]] = []
    for c in classes:
        comp, ev = _anomaly(rng, world, spec, c, length)
        z += comp
        events += ev
    if rng.random() < spec.distractor_rate:
        for _ in range(int(rng.integers(1, 3))):
            q = world.distractors[int(rng.integers(len(world.distractors)))]
            dur = max(2, int(round(rng.uniform(0.05, 0.3) * length)))
            s = int(rng.integers(0, max(1, length - dur)))
            z += np.outer(_envelope(length, s, s + dur, ramp=1.0), q) * 2.0 * rng.uniform(0.5, 1.1)
    crops = []
    for c in range(spec.crops):
        gain = 1.0 if c == 0 else rng.uniform(0.9, 1.1)
        offset = 0.0 if c == 0 else rng.normal(0, 0.04, d)
        noise = rng.normal(0, 0.03, (length, d))
        crops.append(np.maximum(gain * z + offset + noise, 0.0))
    events = sorted(events)
    return np.stack(crops).astype(np.float32), events


def _merge(events: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for s, e in sorted(events):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def _labels(rng: np.random.Generator, n: int) -> list[tuple[str, ...]]:
    """Class tuples for n abnormal videos: each class equally often, 20% with two classes."""
    names = list(CLASSES)
    out = []
    for i in range(n):
        first = names[i % len(names)]
        if rng.random() < 0.2:
            second = names[int(rng.integers(len(names)))]
            out.append((first,) if second == first else (first, second))
        else:
            out.append((first,))
    return out


def _name(split: str, i: int, classes: tuple[str, ...]) -> str:
    tag = "A" if not classes else "-".join(list(classes) + ["0"] * (3 - len(classes)))
    return f"demo.{split}.{i:04d}__#1_label_{tag}"


def _write(root: Path, spec: DemoSpec) -> dict[str, Any]:
    world = _world(spec)
    split_seeds = dict(zip(("train", "test"), np.random.SeedSequence([spec.seed, 0xDE30]).spawn(2)))
    lists: dict[str, list[str]] = {"train": [], "test": []}
    annotations: list[str] = []
    snippets = ["video,snippets,anomalous_frames"]
    n_files = 0
    for split, n_abn, n_nor, (lo, hi) in (("train", spec.train_abnormal, spec.train_normal, spec.train_length),
                                          ("test", spec.test_abnormal, spec.test_normal, spec.test_length)):
        (root / split).mkdir(parents=True)
        label_seed, video_seed = split_seeds[split].spawn(2)
        labels = _labels(np.random.default_rng(label_seed), n_abn) + [()] * n_nor  # violent first
        video_seeds = video_seed.spawn(len(labels))
        for i, (classes, vs) in enumerate(zip(labels, video_seeds)):
            rng = np.random.default_rng(vs)
            length = int(rng.integers(lo, hi + 1))
            crops, events = _video(rng, world, spec, length, classes)
            name = _name(split, i, classes)
            for k in range(spec.crops):
                rel = f"{split}/{name}__{k}.npy"
                np.save(root / rel, crops[k], allow_pickle=False)
                lists[split].append(rel)
                n_files += 1
            if split == "test":
                frames = []
                for s, e in _merge(events):
                    # Human annotations do not sit on 16-frame boundaries: jitter a little.
                    fs = max(0, s * FRAMES_PER_SNIPPET + int(rng.integers(-6, 7)))
                    fe = min(length * FRAMES_PER_SNIPPET, e * FRAMES_PER_SNIPPET + int(rng.integers(-6, 7)))
                    if fe > fs:
                        frames.append((fs, fe))
                if classes:
                    annotations.append(" ".join([name] + [f"{s} {e}" for s, e in frames]))
                positives = sum(e - s for s, e in frames)
                snippets.append(f"{name},{length},{positives}")
    (root / "list").mkdir()
    for split, fname in (("train", "XD_Train.list"), ("test", "XD_Test.list")):
        (root / "list" / fname).write_text("\n".join(lists[split]) + "\n", encoding="utf-8")
    (root / "XD_Annotation.txt").write_text("\n".join(annotations) + "\n", encoding="utf-8")
    (root / "test_snippets.csv").write_text("\n".join(snippets) + "\n", encoding="utf-8")
    return {"files": n_files}


def _manifest(spec: DemoSpec) -> dict[str, Any]:
    return {"generator": "bnwvad.demo", "version": GENERATOR_VERSION, "spec": spec.to_dict()}


def read_manifest(root: str | os.PathLike) -> dict[str, Any] | None:
    p = Path(root) / MANIFEST
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def spec_from_manifest(manifest: dict[str, Any]) -> DemoSpec:
    d = dict(manifest["spec"])
    d["train_length"] = tuple(d["train_length"])
    d["test_length"] = tuple(d["test_length"])
    return DemoSpec(**d)


def existing_demo(root: str | os.PathLike) -> DemoSpec | None:
    """The spec of the complete demo set of this generator version at `root`, else None."""
    root = Path(root)
    have = read_manifest(root)
    if not have or have.get("generator") != "bnwvad.demo" or have.get("version") != GENERATOR_VERSION:
        return None
    try:
        spec = spec_from_manifest(have)
    except (KeyError, TypeError, ValueError):
        return None
    return spec if _is_complete(root, _manifest(spec)) else None


def _is_complete(root: Path, manifest: dict[str, Any]) -> bool:
    """The manifest matches and every file it promises is there."""
    have = read_manifest(root)
    if have is None or {k: have.get(k) for k in manifest} != manifest:
        return False
    try:
        n = sum(1 for _ in (root / "train").glob("*.npy")) + sum(1 for _ in (root / "test").glob("*.npy"))
    except OSError:
        return False
    return n == have.get("files") and all(
        (root / p).is_file() for p in ("list/XD_Train.list", "list/XD_Test.list", "XD_Annotation.txt"))


def generate_demo(root: str | os.PathLike = DEFAULT_ROOT, seed: int = 0, *,
                  spec: DemoSpec | None = None, force: bool = False) -> Path:
    """Write the demo dataset under `root` (or reuse an identical one); returns root.

    Idempotent: when `root/demo_manifest.json` names the same generator version and
    parameters and the files are all there, nothing is written. Otherwise the set is
    generated into a temporary sibling folder and swapped in with renames, so `root` never
    holds a half-written set. A `root` that exists but is not a demo set (no manifest)
    is never touched: DemoError. `seed` overrides `spec.seed`.
    """
    spec = dataclasses.replace(spec or DemoSpec(), seed=int(seed))
    root = Path(root)
    manifest = _manifest(spec)
    if root.exists():
        if not root.is_dir():
            raise DemoError(f"{root}: exists and is not a directory; expected a demo dataset folder")
        if not force and _is_complete(root, manifest):
            return root
        if read_manifest(root) is None and any(root.iterdir()):
            raise DemoError(f"{root}: exists, is not empty and holds no {MANIFEST}: it is not a demo "
                            f"dataset, so it is left alone; choose another --root")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        info = _write(tmp, spec)
        (tmp / MANIFEST).write_text(json.dumps({**manifest, **info}, indent=2) + "\n", encoding="utf-8")
        old = None
        if root.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, old / "set")
        try:
            os.replace(tmp, root)
        except OSError:
            # Another process put a set there meanwhile: keep it if it is what we want.
            if _is_complete(root, manifest):
                return root
            raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root




# -- the demo recipe: the paper's method at a size that trains in minutes on 2 CPU cores ----
# The model sizes, selection ratios and crop count are the `demo` dataset preset's
# (bnwvad.config.PRESETS["demo"]), so checkpoints trained on the demo set name that preset and
# exports of them record 5 crops and D = 128 (DemoSpec's defaults).
_PRESET = PRESETS["demo"]
DEMO_MODEL = dict(_PRESET.model, ratio_sample=_PRESET.ratio_sample, ratio_batch=_PRESET.ratio_batch)
DEMO_TRAIN = dict(batch_size=32, segments=64, iterations=300, eval_every=50)
DEMO_CROPS = _PRESET.crops


def demo_preset(spec: DemoSpec) -> str | None:
    """"demo" when a generated set matches the demo preset (crop count and D), else None:
    a set generated with other sizes is not the preset's data."""
    return "demo" if (spec.crops, spec.feature_dim) == (_PRESET.crops, _PRESET.feature_dim) else None


__all__ = ["CLASSES", "DEFAULT_ROOT", "DEMO_CROPS", "DEMO_MODEL", "DEMO_TRAIN", "DemoError", "DemoSpec",
           "GENERATOR_VERSION", "demo_preset", "existing_demo", "generate_demo", "read_manifest", "spec_from_manifest"]
