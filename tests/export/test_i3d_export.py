"""export_i3d (bnwvad.export.i3d): InceptionI3d -> ONNX feature extractor, verified in ONNX Runtime.

The dynamo exporter takes ~15-30 s on 2 cores whatever the network's width, so one export of a
network with every width divided by 16 (64-d features) is shared by the module's tests; the
fp16 export and the full-size network are marked slow.
"""
from __future__ import annotations

import hashlib
import json
from fractions import Fraction

import numpy as np
import onnx
import pytest
import torch

from bnwvad.i3d import I3DConfig, I3DWeightsError, TorchExtractor, deterministic_state_dict, load_i3d
from bnwvad.runtime.contract import TOLERANCES, error
from bnwvad.runtime.errors import InputError
from bnwvad.runtime.extractor import EXTRACTOR_METADATA_KEYS, ExtractorRunner, extract_video

from bnwvad.export.i3d import (I3DExportError, I3DVerificationError, default_clip_cases, export_i3d,
                               fold_batchnorm, verify_i3d)
from bnwvad.export.metadata import weights_digest

TINY = I3DConfig(width_divisor=16)


@pytest.fixture(scope="module")
def tiny_model():
    return load_i3d(config=TINY)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, tiny_model):
    """The tiny network's deterministic weights, saved as a state_dict file and exported (fp32,
    verified) once: (report, log lines, weights file)."""
    d = tmp_path_factory.mktemp("i3d_export")
    weights = d / "tiny_i3d.pt"
    torch.save(deterministic_state_dict(TINY), weights)
    lines: list[str] = []
    cases = default_clip_cases()                     # one clip of each kind keeps the fixture short
    cases = {"random": cases["random"][:1], "outliers": cases["outliers"][::2]}
    report = export_i3d(weights, d / "i3d.onnx", config=TINY, crops_batch=4, cases=cases, log=lines.append)
    return report, lines, weights


def clips(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, 16, 224, 224)).astype(np.float32)


def test_export_is_verified_against_pytorch(tiny_export):
    report, lines, _ = tiny_export
    assert report.tolerance == "onnx_fp32" and report.limit == TOLERANCES["onnx_fp32"].limit == 1e-4
    assert set(report.errors) == {"random", "outliers"}
    assert all(0 <= e <= 1e-4 for e in report.errors.values()), report.errors
    assert report.path.is_file() and report.size_bytes == report.path.stat().st_size
    assert "verified in ONNX Runtime against PyTorch (onnx_fp32 <= 0.0001)" in report.summary()
    assert any("onnx.checker ok" in line for line in lines)
    assert [p.name for p in report.path.parent.iterdir() if p.name.startswith(".")] == []     # no staging left


def test_graph_and_metadata(tiny_export, tiny_model):
    report, _, weights = tiny_export
    proto = onnx.load(str(report.path))
    onnx.checker.check_model(proto, full_check=True)
    assert not [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    (inp,), (out,) = proto.graph.input, proto.graph.output
    dims = [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "clips" and isinstance(dims[0], str) and dims[1:] == [3, 16, 224, 224]
    assert out.name == "features" and out.type.tensor_type.shape.dim[1].dim_value == 64
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert tuple(meta) == EXTRACTOR_METADATA_KEYS
    assert meta["format"] == "bnwvad-i3d-onnx" and meta["format_version"] == 1 and meta["precision"] == "fp32"
    assert (meta["frames_per_snippet"], meta["input_size"], meta["feature_dim"], meta["crops_batch"]) == (16, 224, 64, 4)
    assert meta["input_range"] == [-1.0, 1.0] and meta["network"]["config"]["width_divisor"] == 16
    assert meta["weights_digest"] == weights_digest(tiny_model.state_dict())
    assert meta["source"] == "tiny_i3d.pt"
    assert meta["source_digest"] == "sha256:" + hashlib.sha256(weights.read_bytes()).hexdigest()
    assert meta["protocol"]["crop_order"][5] == "flip_top_left" and meta["protocol"]["short_side"] == 256
    assert meta == report.metadata


def test_onnx_runtime_matches_pytorch_with_dynamic_batch(tiny_export, tiny_model):
    report, _, _ = tiny_export
    x = clips(5, seed=7)
    ref = TorchExtractor(tiny_model).run(x)
    with ExtractorRunner(report.path, "ort-cpu", threads=2) as ex:
        assert ex.batch == 4 and ex.feature_dim == 64 and ex.meta.precision == "fp32"
        ours = ex.run(x)                                   # calls of 4 and 1 clips
        with pytest.raises(InputError, match="values in"):
            ex.run(x[:1] * 3)
    assert ours.shape == (5, 64)
    assert error(ours, ref, "rel_to_max") <= TOLERANCES["onnx_fp32"].limit


def test_real_video_through_the_exported_graph(tiny_export, tiny_model, tmp_path):
    """A small H.264 .mp4 written with PyAV: decode -> snippets -> crops -> ONNX Runtime equals
    the same pipeline driven by the PyTorch network."""
    av = pytest.importorskip("av")
    path = tmp_path / "v.mp4"
    frames = np.random.default_rng(0).integers(0, 256, (36, 48, 64, 3), dtype=np.uint8)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(30))
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    report, _, _ = tiny_export
    with ExtractorRunner(report.path, "ort-cpu") as ex:
        ours = extract_video(path, ex, crops=1)
    ref = extract_video(path, TorchExtractor(tiny_model), crops=1)
    assert ours.shape == ref.shape == (2, 1, 64)
    assert error(ours, ref, "rel_to_max") <= TOLERANCES["onnx_fp32"].limit


def test_fold_batchnorm_keeps_the_function(tiny_model):
    folded = fold_batchnorm(tiny_model)
    assert all(u.bn is None for u in folded.modules() if hasattr(u, "bn"))
    assert tiny_model.Mixed_3b.b0.bn is not None                      # the original is untouched
    x = torch.from_numpy(clips(1, seed=3))
    with torch.no_grad():
        assert error(folded.clip_features(x).numpy(), tiny_model.clip_features(x).numpy(), "rel_to_max") <= 1e-5


def test_verification_catches_a_different_network(tiny_export):
    report, _, _ = tiny_export
    other = load_i3d(config=TINY)
    with torch.no_grad():
        other.Mixed_4e.b1b.conv3d.weight.mul_(1.5)
    with pytest.raises(I3DVerificationError, match=r"does not reproduce the PyTorch network: case one error") as e:
        verify_i3d(report.path, other, cases={"one": clips(1)})
    assert e.value.errors["one"] > 1e-4


def test_failed_export_leaves_nothing(tiny_export, tiny_model, tmp_path, monkeypatch):
    import shutil

    from bnwvad.export import i3d as mod

    report, _, _ = tiny_export
    out = tmp_path / "out" / "i3d.onnx"

    def fake_export(module, example, path, opset):           # a finished graph, then a failing check
        shutil.copy(report.path, path)

    def failing_verify(*a, **k):
        raise I3DVerificationError("verification failed (test)", {"random": 1.0})

    monkeypatch.setattr(mod, "_torch_export", fake_export)
    monkeypatch.setattr(mod, "verify_i3d", failing_verify)
    with pytest.raises(I3DVerificationError):
        export_i3d(tiny_model, out)
    assert list(out.parent.iterdir()) == []

    def broken_export(module, example, path, opset):
        path.write_bytes(b"partial")
        raise RuntimeError("exporter crashed (test)")

    monkeypatch.setattr(mod, "_torch_export", broken_export)
    with pytest.raises(I3DExportError, match=r"torch.onnx.export failed .*exporter crashed"):
        export_i3d(tiny_model, out)
    assert list(out.parent.iterdir()) == []


def test_bad_arguments(tiny_model, tmp_path):
    with pytest.raises(I3DExportError, match=r"precision 'int8'"):
        export_i3d(tiny_model, tmp_path / "a.onnx", precision="int8")
    with pytest.raises(I3DExportError, match="is a directory"):
        export_i3d(tiny_model, tmp_path)
    with pytest.raises(I3DExportError, match="crops_batch = 0"):
        export_i3d(tiny_model, tmp_path / "a.onnx", crops_batch=0)
    with pytest.raises(I3DExportError, match="weights: a int"):
        export_i3d(42, tmp_path / "a.onnx")
    bad = tmp_path / "bad.pt"
    torch.save({"conv.weight": torch.zeros(2)}, bad)
    with pytest.raises(I3DWeightsError, match="not an InceptionI3d state_dict"):
        export_i3d(bad, tmp_path / "a.onnx")
    assert not (tmp_path / "a.onnx").exists()


def test_default_cases():
    cases = default_clip_cases()
    assert cases["random"].shape == (2, 3, 16, 224, 224) and cases["outliers"].shape == (3, 3, 16, 224, 224)
    assert cases["outliers"].min() == -1 and cases["outliers"].max() == 1
    assert all(c.dtype == np.float32 for c in cases.values())


@pytest.mark.slow
def test_fp16_export(tiny_model, tmp_path):
    report = export_i3d(tiny_model, tmp_path / "i3d_fp16.onnx", precision="fp16")
    assert report.tolerance == "onnx_fp16" and all(e <= 2e-2 for e in report.errors.values()), report.errors
    proto = onnx.load(str(report.path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    with ExtractorRunner(report.path, "ort-cpu") as ex:
        assert ex.meta.precision == "fp16"


@pytest.mark.slow
def test_full_network_export_matches_reference_clip(reference_dir, tmp_path):
    """The real-size network on the reference weights: exported, verified, and the ONNX Runtime
    features of the reference clip within 1e-4 of the reference."""
    d = reference_dir / "i3d"
    if not (d / "i3d_clip.npz").is_file():
        pytest.skip(f"I3D reference data not found at {d}")
    ref = np.load(d / "i3d_clip.npz")
    weights = tmp_path / "rgb_deterministic.pt"
    torch.save(deterministic_state_dict(), weights)
    report = export_i3d(weights, tmp_path / "i3d.onnx", cases={"outliers": default_clip_cases()["outliers"][2:]})
    assert report.metadata["feature_dim"] == 1024 and report.worst <= 1e-4
    with ExtractorRunner(report.path, "ort-cpu") as ex:
        ours = ex.run(ref["clip"].astype(np.float32))
    assert error(ours, ref["features"], "rel_to_max") <= 1e-4


def test_bnwvad_export_i3d_refuses_a_file_of_another_kind_in_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    bad = tmp_path / "w.pt"
    bad.write_bytes(b"garbage, not a checkpoint")
    exe = Path(sys.executable).parent / "bnwvad-export"
    r = subprocess.run([str(exe), "i3d", str(bad), "-o", str(tmp_path / "out" / "i3d.onnx")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("bnwvad-export: error:")]
    assert str(bad) in line and "rgb_imagenet.pt" in line
    assert not (tmp_path / "out").exists()
