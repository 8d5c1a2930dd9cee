"""InceptionI3d (bnwvad.i3d): the pytorch-i3d state_dict names, the deterministic reference weights,
conformance with ../shared/reference/i3d, and the refusal of files that are not such weights.

The full network costs seconds per 16x224x224 clip on 2 CPU cores: the fast tests run one or
two clips of it; the whole 10-crop reference video is marked slow. Everything else uses a
network with every width divided by 16 (64-d features, same architecture).
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from bnwvad.checkpoint import CheckpointError
from bnwvad.i3d import (ENDPOINTS, I3DConfig, I3DWeightsError, InceptionI3d, TorchExtractor,
                        deterministic_state_dict, expected_shapes, load_i3d, same_padding)
from bnwvad.runtime.contract import TOLERANCES, error

TINY = I3DConfig(width_divisor=16)


class NotWeights:
    """Pickled as an arbitrary object: torch.load(weights_only=True) must refuse it."""

    def __init__(self):
        self.payload = [1, 2, 3]


@pytest.fixture(scope="module")
def i3d_ref(reference_dir):
    d = reference_dir / "i3d"
    if not (d / "i3d_clip.npz").is_file():
        pytest.skip(f"I3D reference data not found at {d}")
    return d


@pytest.fixture(scope="module")
def full_model():
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return load_i3d()


def _shapes(npz):
    return [tuple(int(p) for p in s.strip("()").split(",") if p.strip()) for s in npz["state_dict_shapes"]]


# -- the network ---------------------------------------------------------------------------------
def test_state_dict_names_and_shapes_are_pytorch_i3ds(i3d_ref):
    ref = np.load(i3d_ref / "i3d_clip.npz")
    ours = expected_shapes()
    keys = [str(k) for k in ref["state_dict_keys"]]
    assert set(ours) == set(keys) and len(ours) == len(keys) == 344
    assert [ours[k] for k in keys] == _shapes(ref)


def test_architecture_sizes():
    with torch.device("meta"):
        model = InceptionI3d()
    assert model.feature_dim == 1024 and I3DConfig().feature_dim == 1024
    assert [ep.name for ep in ENDPOINTS][-1] == "Mixed_5c"
    tiny = InceptionI3d(TINY).eval()
    assert tiny.feature_dim == TINY.feature_dim == 64
    with torch.no_grad():
        x = torch.zeros(1, 3, 16, 224, 224)
        pooled = tiny.extract_features(x)
        assert pooled.shape == (1, 64, 1, 1, 1)
        assert tiny.logits(pooled).squeeze(4).squeeze(3).shape == (1, 400, 1)      # forward()'s logits
        assert tiny.clip_features(x).shape == (1, 64)
        with pytest.raises(ValueError, match=r"expected \(N, 3, 16, 224, 224\)"):
            tiny.clip_features(torch.zeros(1, 3, 8, 224, 224))


def test_same_padding_is_tensorflows():
    # total = max(k - (s if n % s == 0 else n % s), 0), the smaller half in front
    assert same_padding(16, 7, 2) == (2, 3)
    assert same_padding(224, 7, 2) == (2, 3)
    assert same_padding(15, 7, 2) == (3, 3)
    assert same_padding(112, 3, 2) == (0, 1)
    assert same_padding(8, 3, 1) == (1, 1)
    assert same_padding(4, 2, 2) == (0, 0)
    assert same_padding(5, 1, 1) == (0, 0)


def test_deterministic_state_dict_follows_the_recipe():
    sd = deterministic_state_dict(TINY)
    assert set(sd) == set(expected_shapes(TINY))

    def rng(key):
        return np.random.default_rng(zlib.crc32(key.encode()))

    k = "Conv3d_1a_7x7.conv3d.weight"
    shape = tuple(sd[k].shape)
    np.testing.assert_array_equal(sd[k].numpy(), (rng(k).standard_normal(shape) * np.sqrt(2 / np.prod(shape[1:])))
                                  .astype(np.float32))
    k = "Mixed_4c.b2b.bn.weight"
    np.testing.assert_array_equal(sd[k].numpy(), (1 + 0.1 * rng(k).standard_normal(sd[k].shape)).astype(np.float32))
    for k in ("Mixed_4c.b2b.bn.bias", "logits.conv3d.bias", "Mixed_5c.b0.bn.running_mean"):
        np.testing.assert_array_equal(sd[k].numpy(), (0.1 * rng(k).standard_normal(sd[k].shape)).astype(np.float32))
    k = "Mixed_3b.b3b.bn.running_var"
    np.testing.assert_array_equal(sd[k].numpy(), rng(k).uniform(0.5, 1.5, sd[k].shape).astype(np.float32))
    assert int(sd["Mixed_3b.b3b.bn.num_batches_tracked"]) == 0
    assert all(v.dtype == torch.float32 for k, v in sd.items() if "num_batches" not in k)
    again = deterministic_state_dict(TINY)
    assert all(torch.equal(sd[k], again[k]) for k in sd)


def test_deterministic_state_dict_from_the_reference_names(i3d_ref):
    ref = np.load(i3d_ref / "i3d_clip.npz")
    from_names = deterministic_state_dict(keys=ref["state_dict_keys"], shapes=ref["state_dict_shapes"])
    ours = deterministic_state_dict()
    assert set(from_names) == set(ours)
    for k in ("Conv3d_1a_7x7.conv3d.weight", "Mixed_5c.b3b.bn.running_var", "logits.conv3d.weight"):
        assert torch.equal(from_names[k], ours[k])


# -- conformance with the reference --------------------------------------------------------------
def test_clip_features_match_reference(i3d_ref, full_model):
    ref = np.load(i3d_ref / "i3d_clip.npz")
    clip = torch.from_numpy(ref["clip"].astype(np.float32))
    with torch.inference_mode():
        ours = full_model.clip_features(clip).numpy()
    err = error(ours, ref["features"], "rel_to_max")
    assert err <= TOLERANCES["i3d_reference"].limit, err          # 1e-4, the README's


def test_protocol_one_crop_matches_reference(i3d_ref, full_model):
    """Snippet 1, the flipped centre crop (exercises resize, flip and the centre offset), through
    the numpy protocol and the PyTorch network."""
    from bnwvad.runtime.video import iter_frame_snippets, snippet_clips

    ref = np.load(i3d_ref / "i3d_video_10crop.npz")
    snippet = list(iter_frame_snippets(ref["frames"]))[1]
    clips = snippet_clips(snippet, 10)[9:10]
    ours = TorchExtractor(full_model).run(clips)
    err = error(ours, ref["features"][1, 9:10], "rel_to_max")
    assert err <= TOLERANCES["i3d_protocol"].limit, err


@pytest.mark.slow
def test_whole_protocol_matches_reference_10crop(i3d_ref, full_model):
    """frames (40, 240, 320, 3) -> (2, 10, 1024): the README's 1e-3 (issue: 2e-3)."""
    from bnwvad.runtime.extractor import extract_frames

    ref = np.load(i3d_ref / "i3d_video_10crop.npz")
    assert int(ref["crops"]) == 10
    ours = extract_frames(ref["frames"], TorchExtractor(full_model, batch=5), crops=10)
    assert ours.shape == ref["features"].shape == (2, 10, 1024)
    err = error(ours, ref["features"], "rel_to_max")
    assert err <= TOLERANCES["i3d_protocol"].limit, err


# -- loading and refusing weights ----------------------------------------------------------------
def test_load_from_file_and_classes_from_the_logits(tmp_path):
    sd = deterministic_state_dict(I3DConfig(num_classes=157))          # rgb_charades.pt's classifier
    path = tmp_path / "rgb_charades.pt"
    torch.save(sd, path)
    model = load_i3d(path)
    assert model.config.num_classes == 157 and not model.training
    assert torch.equal(model.state_dict()["Mixed_4b.b1b.conv3d.weight"], sd["Mixed_4b.b1b.conv3d.weight"])
    tiny = deterministic_state_dict(TINY)
    torch.save(tiny, tmp_path / "tiny.pt")
    assert load_i3d(tmp_path / "tiny.pt", config=TINY).feature_dim == 64


def _save(tmp_path, obj, name="w.pt"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_refuses_missing_and_unexpected_keys(tmp_path):
    sd = deterministic_state_dict(TINY)
    del sd["Mixed_4d.b1b.conv3d.weight"]
    sd["Mixed_4d.extra.weight"] = torch.zeros(3)
    path = _save(tmp_path, sd)
    with pytest.raises(I3DWeightsError) as e:
        load_i3d(path, config=TINY)
    msg = str(e.value)
    assert str(path) in msg and "missing keys: Mixed_4d.b1b.conv3d.weight" in msg
    assert "unexpected keys: Mixed_4d.extra.weight" in msg and "Conv3d_1a_7x7.conv3d.weight" in msg
    assert "rgb_imagenet.pt" in msg and isinstance(e.value, CheckpointError)


def test_refuses_shape_mismatch(tmp_path):
    sd = deterministic_state_dict(TINY)
    sd["Mixed_3c.b0.conv3d.weight"] = torch.zeros(5, 1, 1, 1, 1)
    with pytest.raises(I3DWeightsError, match=r"shape mismatch in 1 entry: Mixed_3c.b0.conv3d.weight "
                                              r"\(5, 1, 1, 1, 1\) \(expected \(8, 16, 1, 1, 1\)\)"):
        load_i3d(_save(tmp_path, sd), config=TINY)


def test_refuses_full_network_weights_for_the_wrong_network(tmp_path):
    """A flow network (2 input channels) is not the RGB one."""
    sd = deterministic_state_dict(TINY)
    sd["Conv3d_1a_7x7.conv3d.weight"] = torch.zeros(4, 2, 7, 7, 7)
    with pytest.raises(I3DWeightsError, match="Conv3d_1a_7x7.conv3d.weight"):
        load_i3d(sd, config=TINY)


def test_refuses_non_state_dicts_and_pickles(tmp_path):
    with pytest.raises(I3DWeightsError, match=r"holds a Tensor, not a state_dict"):
        load_i3d(_save(tmp_path, torch.zeros(3)))
    with pytest.raises(I3DWeightsError, match=r"entries .*not tensors"):
        load_i3d(_save(tmp_path, {"a": [1, 2]}), config=TINY)
    # An object that needs arbitrary unpickling is refused by weights_only=True.
    with pytest.raises(I3DWeightsError, match="refused to load") as e:
        load_i3d(_save(tmp_path, {"model": NotWeights()}))
    assert "arbitrary code" in str(e.value)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(I3DWeightsError, match="not a PyTorch checkpoint"):
        load_i3d(junk)
    with pytest.raises(I3DWeightsError, match="no such checkpoint file"):
        load_i3d(tmp_path / "missing.pt")


def test_dataparallel_prefix_is_explained(tmp_path):
    sd = {f"module.{k}": v for k, v in deterministic_state_dict(TINY).items()}
    with pytest.raises(I3DWeightsError, match=r"'module\.' prefix .*model\.module\.state_dict\(\)"):
        load_i3d(sd, config=TINY)


def test_refuses_non_finite_weights():
    sd = deterministic_state_dict(TINY)
    sd["Mixed_5b.b0.bn.running_var"][0] = float("nan")
    with pytest.raises(I3DWeightsError, match="non-finite values in Mixed_5b.b0.bn.running_var"):
        load_i3d(sd, config=TINY)


# -- the extractor interface -----------------------------------------------------------------------
def test_torch_extractor_batches_give_the_same_features():
    model = load_i3d(config=TINY)
    clips = np.random.default_rng(0).uniform(-1, 1, (2, 3, 16, 224, 224)).astype(np.float32)
    a = TorchExtractor(model, batch=1).run(clips)
    b = TorchExtractor(model, batch=2).run(clips)
    assert a.shape == (2, 64) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="expected"):
        TorchExtractor(model).run(clips[0])
