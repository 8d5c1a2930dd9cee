"""Checkpoints: ours round-trip with their config; published ones load with a preset;
broken files fail with a message that says what is wrong."""
import pickle

import pytest
import torch

from bnwvad import CheckpointError, ModelConfig, build_model, convert_official, load_model, save_checkpoint

TINY = ModelConfig(feature_dim=24, embed_dim=16, heads=2, head_dim=8, mlp_dim=16, hidden_dims=(8, 4))


def test_round_trip_rebuilds_model_from_the_file_alone(tmp_path):
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, preset="xd", meta={"step": 3})
    loaded = load_model(path)
    assert loaded.config == model.config
    x = torch.rand(1, 2, 5, 24)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).anomaly, model(x).anomaly, rtol=0, atol=0)
    assert not loaded.training
    assert not list(tmp_path.glob(".*tmp"))          # no temporary file left behind


def test_published_state_dict_needs_a_preset(reference_dir):
    path = reference_dir / "official_state_dict.pkl"
    with pytest.raises(CheckpointError, match="carries no model config.*preset"):
        load_model(path)
    model = load_model(path, preset="xd")
    assert model.config.ratio_sample == 0.2 and model.config.feature_dim == 1024
    assert load_model(path, preset="ucf").config.ratio_sample == 0.1


def test_convert_official_is_a_pure_renaming(reference_dir):
    sd = torch.load(reference_dir / "official_state_dict.pkl", weights_only=True)
    ours = convert_official(sd)
    assert len(ours) == len(sd)
    assert set(ours) == set(build_model(ModelConfig()).state_dict())
    assert ours["head.out.weight"] is sd["normal_head.conv3.weight"]
    # Works on any dict keyed like the published model (gradients, strings, ...).
    assert convert_official({"normal_head.conv1.weight": "g"}) == {"head.convs.0.weight": "g"}
    assert convert_official({"module.embedding.conv_1.0.bias": 1}) == {"embed.bias": 1}
    with pytest.raises(CheckpointError, match="not parameters of the published"):
        convert_official({"normal_head.conv1.weight": 1, "fc.weight": 2})


def test_truncated_file(tmp_path, reference_dir):
    data = (reference_dir / "official_state_dict.pkl").read_bytes()
    path = tmp_path / "cut.pkl"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pkl.*truncated or corrupted"):
        load_model(path, preset="xd")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_model(empty, preset="xd")
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes\.txt: not a PyTorch checkpoint"):
        load_model(junk, preset="xd")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "missing.pt")


def test_foreign_state_dict(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(3), "fc.bias": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="foreign state_dict.*conv1.weight"):
        load_model(path, preset="xd")


def test_shape_mismatch_names_the_parameter(tmp_path, reference_dir):
    sd = torch.load(reference_dir / "official_state_dict.pkl", weights_only=True)
    sd["normal_head.conv2.weight"] = torch.zeros(8, 32, 1)
    path = tmp_path / "odd.pkl"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"shape mismatch for head\.convs\.1\.weight.*\(8, 32, 1\).*\(16, 32, 1\)"):
        load_model(path, preset="xd")


def test_missing_parameter_is_named(tmp_path):
    sd = build_model(TINY).state_dict()
    del sd["head.out.bias"]
    path = tmp_path / "partial.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"missing \['head.out.bias'\]"):
        load_model(path, config=TINY)


class Evil:
    def __reduce__(self):
        return (print, ("this would have run",))


def test_arbitrary_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_model(path, preset="xd")


def test_audio_features_are_read_off_the_weights(tmp_path):
    cfg = ModelConfig(feature_dim=1152)
    path = tmp_path / "xd_audio.pt"
    torch.save(build_model(cfg).state_dict(), path)
    assert load_model(path, preset="xd").config.feature_dim == 1152


def test_checkpoints_carry_their_crop_count(tmp_path):
    """Exports record the crops a video must have: a checkpoint says it (issue #10), else its
    preset does; a checkpoint of neither leaves it unknown."""
    from bnwvad.checkpoint import checkpoint_info, read_checkpoint

    model = build_model(TINY)
    save_checkpoint(tmp_path / "own.pt", model, preset="demo", crops=3)
    save_checkpoint(tmp_path / "demo.pt", model, preset="demo")
    save_checkpoint(tmp_path / "none.pt", model)
    assert read_checkpoint(tmp_path / "own.pt")["crops"] == 3
    assert [checkpoint_info(tmp_path / f"{n}.pt")["crops"] for n in ("own", "demo", "none")] == [3, 5, None]
    assert checkpoint_info(tmp_path / "demo.pt")["preset"] == "demo"
    old = read_checkpoint(tmp_path / "demo.pt")
    del old["crops"]                                     # a checkpoint written before crops existed
    old["preset"] = "ucf"
    torch.save(old, tmp_path / "old.pt")
    assert checkpoint_info(tmp_path / "old.pt")["crops"] == 10
    with pytest.raises(ValueError, match="crops=0"):
        save_checkpoint(tmp_path / "bad.pt", model, crops=0)
