"""Fixtures for the export tests: a tiny model for the fast checks, and one export per
precision of the published weights per session (exports of the full model take seconds)."""
from __future__ import annotations

import pytest
import torch

from bnwvad import ModelConfig, build_model

TINY = dict(feature_dim=24, embed_dim=16, heads=2, head_dim=8, mlp_dim=16, hidden_dims=(8, 4))


def make_tiny(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(**{**TINY, **overrides}))
    # Trained-looking BN statistics and affine parameters, so the fold has work to do.
    with torch.no_grad():
        for bn in model.head.bns:
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.2, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture
def tiny():
    """Factory: tiny(seed=0, **config overrides) -> a BNWVAD in eval mode."""
    return make_tiny


@pytest.fixture(scope="session")
def official_model(reference_dir):
    from bnwvad import load_model

    return load_model(reference_dir / "official_state_dict.pkl", preset="xd")


@pytest.fixture(scope="session")
def official_fp32(reference_dir, tmp_path_factory):
    """The published weights exported with the default settings (verification on)."""
    from bnwvad.export import export_onnx

    out = tmp_path_factory.mktemp("fp32") / "official.onnx"
    return export_onnx(reference_dir / "official_state_dict.pkl", out, preset="xd")


@pytest.fixture(scope="session")
def official_fp16(reference_dir, tmp_path_factory):
    from bnwvad.export import export_onnx

    out = tmp_path_factory.mktemp("fp16") / "official_fp16.onnx"
    return export_onnx(reference_dir / "official_state_dict.pkl", out, preset="xd", precision="fp16")


def ort_session(path_or_bytes):
    import onnxruntime as ort

    src = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"])


@pytest.fixture
def session():
    """Factory: session(path or serialised model) -> an ONNX Runtime CPU session."""
    return ort_session
