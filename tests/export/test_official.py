"""The published weights exported with --preset xd reproduce the published code's outputs
(../shared/reference/infer_*.npz) through ONNX Runtime; metadata; the padded-batch contract."""
import json

import numpy as np
import onnx
import pytest

from bnwvad import __version__
from bnwvad.checkpoint import file_digest
from bnwvad.runtime.contract import TOLERANCES, check, error

CASES = ["infer_1crop_T1.npz", "infer_1crop_T2.npz", "infer_ucf_10crop_T64.npz", "infer_xd_5crop_T137.npz"]


def _outputs(sess, features):
    """Per crop (each crop run as its own video: N = C, C = 1) and the crop mean (N = 1)."""
    c, t, _ = features.shape
    per = sess.run(None, {"features": features[:, None], "lengths": np.full(c, t, np.int64)})
    mean = sess.run(None, {"features": features[None], "lengths": np.array([t], np.int64)})
    return dict(zip(("score", "dfm", "anomaly"), per)), dict(zip(("score", "dfm", "anomaly"), mean))


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_export_reproduces_the_published_outputs(reference_dir, official_fp32, official_fp16, session,
                                                 name, precision):
    rep = official_fp32 if precision == "fp32" else official_fp16
    tol = {"fp32": "onnx_fp32", "fp16": "onnx_fp16"}[precision]
    assert TOLERANCES[tol].limit <= {"fp32": 1e-4, "fp16": 2e-2}[precision]
    with np.load(reference_dir / name, allow_pickle=False) as z:
        ref = {k: z[k] for k in z.files}
    per, mean = _outputs(session(rep.path), ref["features"])
    for field in ("score", "dfm", "anomaly"):
        err, ok = check(tol, per[field], ref[field])
        assert ok, (name, precision, field, err)
    err, ok = check(tol, mean["anomaly"][0], ref["anomaly_crop_mean"])
    assert ok, (name, precision, "anomaly_crop_mean", err)
    # The crop means of score and dfm too.
    for field in ("score", "dfm"):
        assert check(tol, mean[field][0], ref[field].mean(0))[1]


def test_padded_batch_of_the_published_model(reference_dir, official_fp32, session):
    """Videos of different lengths in one zero-padded batch: each equals itself alone (1e-5)."""
    sess = session(official_fp32.path)
    with np.load(reference_dir / "infer_xd_5crop_T137.npz", allow_pickle=False) as z:
        feats = z["features"]                                     # (5, 137, 1024)
    lengths = [137, 60, 1, 2]
    batch = np.zeros((4, 5, 137, 1024), np.float32)
    for i, n in enumerate(lengths):
        batch[i, :, :n] = np.roll(feats, 11 * i, axis=1)[:, :n]
    out = sess.run(None, {"features": batch, "lengths": np.array(lengths, np.int64)})
    for i, n in enumerate(lengths):
        alone = sess.run(None, {"features": batch[i:i + 1, :, :n], "lengths": np.array([n], np.int64)})
        for k in range(3):
            err, ok = check("padding", out[k][i, :n], alone[k][0])
            assert ok, (i, k, err)


def test_metadata_of_the_published_export(reference_dir, official_fp32, official_model):
    proto = onnx.load(str(official_fp32.path), load_external_data=False)
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["format"] == "bnwvad-onnx" and meta["format_version"] == 1
    assert meta["feature_dim"] == 1024 and meta["crops"] == 5 and meta["frames_per_snippet"] == 16
    assert meta["precision"] == "fp32" and meta["opset"] == 17 and meta["bnwvad_version"] == __version__
    assert meta["preset"] == "xd" and meta["anomaly"] == "product"
    assert meta["model_config"] == official_model.config.to_dict()
    assert meta["source"] == "official_state_dict.pkl"
    assert meta["source_digest"] == file_digest(reference_dir / "official_state_dict.pkl")
    assert meta["inputs"] == [{"name": "features", "dtype": "float32", "shape": ["N", "C", "T", 1024]},
                              {"name": "lengths", "dtype": "int64", "shape": ["N"]}]
    assert [o["name"] for o in meta["outputs"]] == ["score", "dfm", "anomaly"]
    # The graph's own signature says the same, with N, C, T dynamic.
    ins = {i.name: i.type.tensor_type for i in proto.graph.input}
    assert [d.dim_param or d.dim_value for d in ins["features"].shape.dim] == ["N", "C", "T", 1024]
    assert ins["features"].elem_type == onnx.TensorProto.FLOAT and ins["lengths"].elem_type == onnx.TensorProto.INT64
    outs = {o.name: o.type.tensor_type for o in proto.graph.output}
    assert list(outs) == ["score", "dfm", "anomaly"]
    assert all(t.elem_type == onnx.TensorProto.FLOAT for t in outs.values())
    assert proto.opset_import[0].version == 17
    assert not [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    # One self-contained file.
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in proto.graph.initializer)


def test_verification_report_covers_shapes_and_outliers(official_fp32, official_fp16):
    for rep in (official_fp32, official_fp16):
        v = rep.verification
        assert v.ok and len(v.cases) >= 7
        names = " ".join(c.case for c in v.cases)
        for word in ("padded", "T=1", "all-zero", "65504", "1e5"):
            assert word in names
        shapes = {c.shape for c in v.cases}
        assert len({s[0] for s in shapes}) > 1 and len({s[1] for s in shapes}) > 1 and len({s[2] for s in shapes}) > 1
        assert "worst rel error" in v.format()


@pytest.mark.slow
def test_int8_export_of_the_published_model(reference_dir, tmp_path, session):
    from bnwvad.export import export_onnx

    rep = export_onnx(reference_dir / "official_state_dict.pkl", tmp_path / "int8.onnx", preset="xd",
                      precision="int8")
    assert rep.verification.ok and rep.metadata["precision"] == "int8"
    proto = onnx.load(str(rep.path))
    ops = {n.op_type for n in proto.graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}, ops
    with np.load(reference_dir / "infer_xd_5crop_T137.npz", allow_pickle=False) as z:
        f, want = z["features"], z["anomaly_crop_mean"]
    got = session(rep.path).run(["anomaly"], {"features": f[None], "lengths": np.array([f.shape[1]])})[0][0]
    assert error(got, want, "rel_to_max") <= TOLERANCES["onnx_int8"].limit
