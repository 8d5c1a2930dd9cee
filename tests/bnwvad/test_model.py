"""The model on its own: padding, outliers, ablation switches, devices, no torch at import."""
import subprocess
import sys

import pytest
import torch

from _helpers import devices
from bnwvad import ModelConfig, build_model
from bnwvad.runtime.contract import check

TINY = dict(feature_dim=24, embed_dim=16, heads=2, head_dim=8, mlp_dim=16, hidden_dims=(8, 4))


def tiny_model(seed=0, device="cpu", **kw):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(**{**TINY, **kw}), device=device)
    # Give the BN layers non-trivial running statistics, as a trained model has.
    with torch.no_grad():
        for bn in model.head.bns:
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.2, 2.0)
    return model.eval()


@pytest.mark.parametrize("device", devices())
def test_padded_batch_gives_each_video_its_own_result(device):
    model = tiny_model(device=device)
    lengths = [7, 1, 13, 2]
    crops = 3
    videos = [torch.rand(1, crops, t, 24, device=device) * 3 for t in lengths]
    batch = torch.zeros(len(lengths), crops, max(lengths), 24, device=device)
    for i, v in enumerate(videos):
        batch[i, :, : lengths[i]] = v[0]
    # Garbage (not zeros) beyond the lengths must not leak in either.
    batch[1, :, 1:] = 1e6
    with torch.no_grad():
        out = model(batch, torch.tensor(lengths, device=device))
        for i, v in enumerate(videos):
            alone = model(v)
            for name in ("score", "dfm", "anomaly"):
                got = getattr(out, name)[i, : lengths[i]].cpu()
                err, ok = check("padding", got, getattr(alone, name)[0].cpu())
                assert ok, (name, i, err)


def test_outlier_inputs_stay_finite():
    model = tiny_model()
    x = torch.rand(2, 2, 30, 24)
    x[0, :, 10:15] = 1e4          # a burst far outside the training range
    x[1] = 0.0                    # all-zero features
    with torch.no_grad():
        out = model(x)
    for o in out:
        assert torch.isfinite(o).all()
    assert out.dfm[0, 10:15].min() > out.dfm[0, :5].max()   # the burst is what stands out


def test_outputs_have_documented_shapes_and_crop_mean():
    model = tiny_model()
    x = torch.rand(3, 4, 9, 24)
    with torch.no_grad():
        per = model.per_crop(x)
        out = model(x)
    assert per.score.shape == (3, 4, 9) and out.anomaly.shape == (3, 9)
    torch.testing.assert_close(out.anomaly, (per.score * per.dfm).mean(1))
    torch.testing.assert_close(out.score, per.score.mean(1))
    assert ((0 < out.score) & (out.score < 1)).all()


@pytest.mark.parametrize("score", ["classifier", "dfm", "product"])
def test_score_switch(score):
    model = tiny_model(score=score)
    x = torch.rand(1, 2, 6, 24)
    with torch.no_grad():
        per = model.per_crop(x)
    want = {"classifier": per.score, "dfm": per.dfm, "product": per.score * per.dfm}[score]
    torch.testing.assert_close(per.anomaly, want)


def test_bad_inputs_are_explained():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"\(N, C, T, D\)"):
        model(torch.rand(5, 24))
    with pytest.raises(ValueError, match="D=10"):
        model(torch.rand(1, 1, 5, 10))
    with pytest.raises(ValueError, match="lengths must lie"):
        model(torch.rand(1, 1, 5, 24), torch.tensor([6]))
    with pytest.raises(RuntimeError, match="model.train"):
        model.loss(torch.rand(2, 5, 24), torch.rand(2, 5, 24))


def test_loss_terms_weights_and_live_config():
    model = tiny_model().train()
    torch.manual_seed(1)
    nor, abn = torch.rand(3, 20, 24), torch.rand(3, 20, 24) * 2
    out = model.loss(nor, abn)
    assert set(out) >= {"total", "normal", "mpp", "mpp_per_layer", "n_selected"}
    m1, m2 = out["mpp_per_layer"]
    torch.testing.assert_close(out["mpp"], 5 * m1 + 20 * m2)
    torch.testing.assert_close(out["total"], out["normal"] + out["mpp"])
    # k_s = int(20 * 0.2) = 4 per video, k_b = int(3 * 20 * 0.4) = 24: the union has >= 24.
    assert 24 <= out["n_selected"] <= 24 + 3 * 4
    # A plain attribute write is honoured by the next call.
    model.config.ratio_sample, model.config.ratio_batch = 0.0, 0.1
    assert model.loss(nor, abn)["n_selected"] == 6
    model.config.ratio_sample = model.config.ratio_batch = 0.0
    out = model.loss(nor, abn)
    assert out["n_selected"] == 0 and float(out["mpp"].detach()) == 0.0
    out["total"].backward()       # still differentiable


def test_bn_statistics_update_before_the_dfm_is_used():
    model = tiny_model().train()
    before = model.head.bns[0].running_mean.clone()
    model.loss(torch.rand(2, 10, 24), torch.rand(2, 10, 24))
    assert not torch.equal(before, model.head.bns[0].running_mean)
    assert int(model.head.bns[0].num_batches_tracked) == 1


@pytest.mark.parametrize("distance", ["mahalanobis", "euclidean", "cosine"])
def test_distance_switch_trains(distance):
    model = tiny_model(distance=distance).train()
    out = model.loss(torch.rand(2, 10, 24), torch.rand(2, 10, 24))
    out["total"].backward()
    assert torch.isfinite(out["total"])


def test_flop_count_matches_the_published_size():
    model = build_model(ModelConfig())
    per_snippet_crop = model.num_flops(200, crops=10) / (200 * 10)
    assert 12.5e6 < per_snippet_crop < 13.1e6      # ~12.8 MFLOP at T = 200


def test_import_bnwvad_does_not_import_torch():
    code = "import sys, bnwvad; assert 'torch' not in sys.modules, 'torch imported'; print(bnwvad.__version__)"
    subprocess.run([sys.executable, "-c", code], check=True)
