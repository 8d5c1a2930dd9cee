"""export_onnx on small models: shapes, opsets, ablation switches, padding, atomic writes."""
import json

import numpy as np
import onnx
import pytest
import torch

import bnwvad.runtime.contract as contract
from bnwvad import save_checkpoint
from bnwvad.export import ExportError, VerificationError, export_onnx, read_metadata
from bnwvad.export.graph import GraphError, build_graph
from bnwvad.export.fold import fold
from bnwvad.runtime.contract import check


def _run(sess, x, lengths):
    return sess.run(["score", "dfm", "anomaly"], {"features": x.numpy(), "lengths": lengths.numpy()})


@pytest.mark.parametrize("opset", [17, 18, 21])
def test_dynamic_n_c_t_match_pytorch(tiny, session, opset):
    model = tiny()
    sess = session(build_graph(fold(model), opset=opset).SerializeToString())
    g = torch.Generator().manual_seed(opset)
    for n, c, t in [(1, 1, 1), (1, 3, 2), (2, 5, 17), (4, 2, 64)]:
        x = torch.rand(n, c, t, model.config.feature_dim, generator=g) * 2
        lengths = torch.full((n,), t)
        with torch.no_grad():
            ref = model(x)
        for name, o, r in zip(("score", "dfm", "anomaly"), _run(sess, x, lengths), ref):
            assert o.shape == (n, t) and o.dtype == np.float32
            err, ok = check("onnx_fp32", o, r)
            assert ok, (opset, (n, c, t), name, err)


@pytest.mark.parametrize("distance,score", [("euclidean", "product"), ("cosine", "product"),
                                            ("mahalanobis", "classifier"), ("mahalanobis", "dfm")])
def test_ablation_switches_export(tiny, session, tmp_path, distance, score):
    model = tiny(distance=distance, score=score)
    rep = export_onnx(model, tmp_path / "m.onnx")          # verification on: raises if wrong
    assert rep.verification.ok
    assert rep.metadata["model_config"]["distance"] == distance and rep.metadata["anomaly"] == score


def test_padded_batch_equals_each_video_alone(tiny, session):
    model = tiny()
    sess = session(build_graph(fold(model)).SerializeToString())
    d = model.config.feature_dim
    lengths = [9, 1, 30, 4]
    videos = [torch.rand(1, 3, t, d) * 2 for t in lengths]
    batch = torch.full((4, 3, 30, d), 1e4)                  # garbage, not zeros, past each length
    for i, v in enumerate(videos):
        batch[i, :, : lengths[i]] = v[0]
    out = _run(sess, batch, torch.tensor(lengths))
    for i, v in enumerate(videos):
        alone = _run(sess, v, torch.tensor([lengths[i]]))
        with torch.no_grad():
            torch_alone = model(v)
        for k in range(3):
            err, ok = check("padding", out[k][i, : lengths[i]], alone[k][0])
            assert ok, (i, k, err)
            err, ok = check("onnx_fp32", out[k][i, : lengths[i]], torch_alone[k][0])
            assert ok, (i, k, err)


def test_export_from_our_checkpoint_carries_its_config(tiny, tmp_path):
    model = tiny(seed=3)
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt, model, preset="ucf")
    rep = export_onnx(ckpt, tmp_path / "m.onnx")
    meta = read_metadata(rep.path)
    assert meta["preset"] == "ucf" and meta["crops"] == 10
    assert meta["model_config"] == model.config.to_dict()
    assert meta["source"] == "ckpt.pt" and meta["source_digest"].startswith("sha256:")
    with pytest.raises(ExportError, match="trained with preset 'ucf'.*'xd'"):
        export_onnx(ckpt, tmp_path / "other.onnx", preset="xd")
    assert not (tmp_path / "other.onnx").exists()


def test_in_memory_model_has_no_source_digest_but_a_weights_digest(tiny, tmp_path):
    a = export_onnx(tiny(seed=1), tmp_path / "a.onnx", verify=False)
    b = export_onnx(tiny(seed=2), tmp_path / "b.onnx", verify=False)
    assert a.metadata["source"] is None and a.metadata["source_digest"] is None
    assert a.metadata["weights_digest"] != b.metadata["weights_digest"]
    assert a.metadata["crops"] is None and a.metadata["preset"] is None


def test_failed_verification_leaves_nothing_and_keeps_the_old_file(tiny, tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous export")
    monkeypatch.setitem(contract.TOLERANCES, "onnx_fp32", contract.Tolerance(0.0, "rel_to_max", "test"))
    with pytest.raises(VerificationError, match="does not reproduce the PyTorch model") as e:
        export_onnx(tiny(), out)
    assert not e.value.report.ok
    assert out.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]      # no temporary left


def test_external_data_writes_two_files_that_load(tiny, session, tmp_path):
    rep = export_onnx(tiny(), tmp_path / "m.onnx", external_data=True)
    assert rep.data_path == tmp_path / "m.onnx.data" and rep.data_path.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    proto = onnx.load(str(rep.path), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    sess = session(rep.path)
    x = torch.rand(1, 2, 5, 24)
    assert np.isfinite(_run(sess, x, torch.tensor([5]))[0]).all()


def test_default_export_is_one_self_contained_file(tiny, tmp_path):
    export_onnx(tiny(), tmp_path / "m.onnx", verify=False)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in proto.graph.initializer)


def test_bad_arguments_fail_clearly(tiny, tmp_path):
    with pytest.raises(ExportError, match="precision 'bf16'"):
        export_onnx(tiny(), tmp_path / "m.onnx", precision="bf16")
    with pytest.raises(ExportError, match="opset 12"):
        export_onnx(tiny(), tmp_path / "m.onnx", opset=12)
    with pytest.raises(ExportError, match="is a directory"):
        export_onnx(tiny(), tmp_path)
    with pytest.raises(ValueError, match="unknown dataset preset 'kinetics'"):
        export_onnx(tiny(), tmp_path / "m.onnx", preset="kinetics")
    with pytest.raises(GraphError, match="opset 30"):
        build_graph(fold(tiny()), opset=30)
    assert not list(tmp_path.iterdir())


def test_metadata_values_are_json(tiny, tmp_path):
    rep = export_onnx(tiny(), tmp_path / "m.onnx", preset="xd", verify=False)
    proto = onnx.load(str(rep.path))
    raw = {p.key: p.value for p in proto.metadata_props}
    assert {k: json.loads(v) for k, v in raw.items()} == rep.metadata


@pytest.mark.parametrize("options", [{"qkv": "separate"}, {"attention": "mha"}, {"adds": "chain"},
                                     {"mask": "mul"}, {"row_scale": True}])
def test_graph_variants_compute_the_same_function(tiny, session, options):
    """The measured alternatives (bench/export_speed.py) stay exact, padding included."""
    model = tiny()
    sess = session(build_graph(fold(model), options=options).SerializeToString())
    x = torch.rand(3, 2, 13, model.config.feature_dim) * 2
    lengths = torch.tensor([13, 6, 1])
    with torch.no_grad():
        ref = model(x, lengths)
    for i, n in enumerate(lengths.tolist()):
        for o, r in zip(_run(sess, x, lengths), ref):
            err, ok = check("onnx_fp32", o[i, :n], r[i, :n])
            assert ok, (options, i, err)
    with pytest.raises(GraphError, match="unknown graph options"):
        build_graph(fold(model), options={"fast": True})
