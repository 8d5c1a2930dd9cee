"""The PyTorch model behind the runtime's Runner interface: the reference every other runner
is compared with (export verification, the TensorRT builder, the benchmark).

    runner = TorchRunner(model, device="cpu")
    out = runner.run(features, lengths)      # (N, C, T, D) float32, (N,) -> {name: (N, T)}

Host numpy in and out, like bnwvad.runtime's runners, so a Scorer gives it exactly the padded
calls it gives an exported graph. On CUDA, TF32 is off for every call: fp32 means fp32.
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch

from .model import BNWVAD
from bnwvad.runtime.contract import FRAMES_PER_SNIPPET, OUTPUTS
from bnwvad.runtime.metadata import ModelMeta
from bnwvad.runtime.validate import ShapeLimits, validate_inputs


@contextlib.contextmanager
def exact_fp32():
    """cuDNN convolutions and CUDA matmuls default to TF32 (10-bit mantissa) on Ampere and
    newer, which would give the reference ~1e-3 errors of its own: off while in the block."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def model_meta(model: BNWVAD, *, crops: int | None = None, preset: str | None = None,
               source: str = "<torch model>") -> ModelMeta:
    """What an export of `model` would declare: the ModelMeta the runner validates against."""
    cfg = model.config
    return ModelMeta(source=source, feature_dim=int(cfg.feature_dim), crops=crops,
                     frames_per_snippet=FRAMES_PER_SNIPPET, precision="fp32",
                     model_config=cfg.to_dict(), preset=preset, anomaly=cfg.score)


class TorchRunner:
    """Runs a BNWVAD model (in eval mode) on `device`; implements the Runner protocol.

    The model is used as given on its own device; for another device a copy is moved there,
    so the caller's model stays where it is.
    """

    fallback = None
    limits = ShapeLimits()

    def __init__(self, model: BNWVAD, *, device: str | torch.device = "cpu", meta: ModelMeta | None = None,
                 name: str | None = None):
        self.dev = torch.device(device)
        here = next(model.parameters()).device
        self.model = (model if here == self.dev else copy.deepcopy(model).to(self.dev)).eval()
        self.meta = meta or model_meta(model)
        self.device = "cuda" if self.dev.type == "cuda" else "cpu"
        self.requested = self.backend = name or ("torch_cuda" if self.device == "cuda" else "torch_eager")
        self.path = f"<{self.backend}>"
        where = (f"CUDA {torch.cuda.get_device_name(self.dev)}" if self.device == "cuda"
                 else f"CPU, {torch.get_num_threads()} threads")
        self.providers = [f"PyTorch {torch.__version__} eager, {where}"]

    def run(self, features: np.ndarray, lengths, *, check: bool = True) -> dict[str, np.ndarray]:
        if check:
            features, lengths = validate_inputs(features, lengths, self.meta, limits=self.limits)
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(self.dev)
        lengths = np.asarray(lengths, dtype=np.int64)
        # Unpadded input takes the model's plain path (what bnwvad.evaluate runs); padded, the masks.
        lens = None if bool((lengths == x.shape[2]).all()) else torch.from_numpy(lengths).to(self.dev)
        with torch.inference_mode(), exact_fp32():
            out = self.model(x, lens)
        return {k: getattr(out, k).float().cpu().numpy() for k in OUTPUTS}

    def describe(self) -> str:
        return f"{self.backend} [{', '.join(self.providers)}]"

    def close(self) -> None:
        self.model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["TorchRunner", "exact_fp32", "model_meta"]
