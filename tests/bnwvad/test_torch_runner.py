"""TorchRunner: the PyTorch model behind the runtime's Runner interface (the reference)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bnwvad.config import ModelConfig
from bnwvad.model import BNWVAD
from bnwvad.runtime import InputError, Scorer
from bnwvad.runtime.contract import OUTPUTS, check
from bnwvad.torch_runner import TorchRunner, exact_fp32, model_meta

CFG = ModelConfig(feature_dim=12, embed_dim=16, depth=1, heads=2, head_dim=8, mlp_dim=16)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return BNWVAD(CFG).eval()


def test_outputs_are_the_models_and_the_model_is_left_where_it_was(model):
    x = np.random.default_rng(0).random((2, 3, 9, 12), dtype=np.float32)
    out = TorchRunner(model).run(x, np.array([9, 9]))
    with torch.no_grad():
        want = model(torch.from_numpy(x))
    for k in OUTPUTS:
        assert out[k].shape == (2, 9) and out[k].dtype == np.float32
        np.testing.assert_array_equal(out[k], getattr(want, k).numpy())
    assert not model.training and next(model.parameters()).device.type == "cpu"


def test_padded_calls_through_the_scorer_give_each_video_its_own_result(model):
    rng = np.random.default_rng(1)
    videos = {f"v{t}": rng.random((2, t, 12), dtype=np.float32) for t in (11, 9, 3)}
    runner = TorchRunner(model)
    batched = {r.name: r for r in Scorer(runner, crops=None, min_fill=0.0).score(videos)}
    for name, feats in videos.items():
        alone = runner.run(feats[None], np.array([feats.shape[1]]))
        for k in OUTPUTS:
            err, ok = check("padding", getattr(batched[name], k), alone[k][0])
            assert ok, (name, k, err)


def test_inputs_are_validated_against_the_models_metadata(model):
    runner = TorchRunner(model, meta=model_meta(model, crops=3))
    assert runner.meta.feature_dim == 12 and runner.meta.crops == 3 and runner.backend == "torch_eager"
    with pytest.raises(InputError, match=r"D = 7 .* the model expects D = 12"):
        runner.run(np.zeros((1, 3, 4, 7), np.float32), np.array([4]))
    with pytest.raises(InputError, match="2 crops"):
        runner.run(np.zeros((1, 2, 4, 12), np.float32), np.array([4]))


def test_exact_fp32_restores_the_tf32_switches():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with exact_fp32():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
