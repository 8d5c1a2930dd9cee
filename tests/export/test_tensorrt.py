"""TensorRT engines. Without TensorRT or a GPU the error says what is missing and how to get
it; the engine tests proper run where a GPU is (marked gpu)."""
import json
import sys

import numpy as np
import pytest

from bnwvad.export import Profile, TensorRTError, build_engine
from bnwvad.export.trt_engine import TensorRTUnavailable, require_tensorrt


def test_missing_tensorrt_is_a_clear_error(monkeypatch, tmp_path, tiny):
    from bnwvad.export import export_onnx

    onnx_path = export_onnx(tiny(), tmp_path / "m.onnx", verify=False).path
    monkeypatch.setitem(sys.modules, "tensorrt", None)          # import tensorrt -> ImportError
    with pytest.raises(TensorRTError, match=r"TensorRT is not installed.*pip install 'bnwvad\[tensorrt\]'"):
        require_tensorrt()
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed"):
        build_engine(onnx_path, tmp_path / "m.engine")
    assert not (tmp_path / "m.engine").exists()


def test_cli_engine_without_tensorrt_or_gpu_fails_in_one_line(tmp_path, tiny):
    import subprocess

    from bnwvad.export import export_onnx
    from _helpers import gpu_available

    try:
        import tensorrt  # noqa: F401
        have_trt = True
    except ImportError:
        have_trt = False
    if have_trt and gpu_available():
        pytest.skip("TensorRT and a GPU are present: the gpu tests cover the engine")
    onnx_path = export_onnx(tiny(), tmp_path / "m.onnx", verify=False).path
    exe = __import__("pathlib").Path(sys.executable).parent / "bnwvad-export"
    r = subprocess.run([str(exe), "engine", str(onnx_path), "-o", str(tmp_path / "m.engine")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr       # nothing could run here
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("bnwvad-export: error:")]
    assert len(line) == 1
    assert ("TensorRT is not installed" in line[0] and "pip install" in line[0]) or "no CUDA GPU" in line[0]
    assert not (tmp_path / "m.engine").exists()


def test_int8_graph_is_refused_for_tensorrt(tmp_path, tiny):
    from bnwvad.export import export_onnx

    path = export_onnx(tiny(), tmp_path / "q.onnx", precision="int8", verify=False).path
    with pytest.raises(TensorRTError, match="int8 graph cannot become a TensorRT engine"):
        build_engine(path, tmp_path / "q.engine")


def test_profile_validation():
    assert Profile.default(5).opt == (1, 5, 200)
    assert Profile((1, 1, 1), (2, 5, 100), (4, 5, 300)).validate().to_dict() == {
        "N": [1, 2, 4], "C": [1, 5, 5], "T": [1, 100, 300]}
    with pytest.raises(TensorRTError, match="for T: expected min <= opt <= max"):
        Profile((1, 1, 300), (1, 1, 200), (1, 1, 400)).validate()
    with pytest.raises(TensorRTError, match="positive"):
        Profile((0, 1, 1), (1, 1, 1), (1, 1, 1)).validate()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_matches_pytorch_on_the_gpu(reference_dir, official_fp32, official_fp16, tmp_path, precision):
    """Build (strongly typed, TF32 off), verify against the unoptimised PyTorch model on the
    GPU, write engine + sidecar + timing cache; a rebuild reuses the cache."""
    src = official_fp32 if precision == "fp32" else official_fp16
    profile = Profile((1, 1, 1), (1, 5, 64), (3, 5, 160))
    rep = build_engine(src.path, tmp_path / "m.engine", profile=profile,
                       reference=reference_dir / "official_state_dict.pkl", preset="xd")
    assert rep.verification.ok
    assert rep.path.stat().st_size > 0 and rep.timing_cache.stat().st_size > 0
    side = json.loads(rep.sidecar.read_text())
    for key in ("feature_dim", "crops", "precision", "model_config", "source_digest", "tensorrt_version",
                "profile", "device_name", "compute_capability", "engine_digest"):
        assert key in side, key
    assert side["precision"] == precision and side["profile"]["T"] == [1, 64, 160]
    rep2 = build_engine(src.path, tmp_path / "m2.engine", profile=profile, timing_cache=rep.timing_cache)
    assert rep2.verification.ok                                 # against the ONNX graph in ORT

    # The published reference outputs through the engine, on the runtime's runner.
    from bnwvad.runtime import load_runner
    from bnwvad.runtime.contract import check, tolerance_for

    with load_runner(rep.path, "tensorrt", strict=True) as runner:
        assert runner.backend == "tensorrt" and runner.meta.crops == 5
        with np.load(reference_dir / "infer_xd_5crop_T137.npz", allow_pickle=False) as z:
            f, want = z["features"], z["anomaly_crop_mean"]
        got = runner.run(f[None], np.array([f.shape[1]], np.int64))["anomaly"][0]
    err, ok = check(tolerance_for(precision, "tensorrt"), got, want)
    assert ok, err


def test_window_options_shape_the_engine_profile_around_the_window_span(tmp_path, tiny):
    from bnwvad.export import export_onnx
    from bnwvad.export.cli import _window_shapes

    onnx_path = export_onnx(tiny(), tmp_path / "m.onnx", preset="xd", verify=False).path
    lo, opt, hi = _window_shapes((None, None, None), 64, 4, 8, 20, onnx_path)
    assert lo == (1, 1, 1) and opt == (8, 5, 75) and hi == (20, 5, 75)          # span = 64 - 1 + 8 + 4
    assert _window_shapes((None, None, (2, 5, 100)), 64, 4, 8, 20, onnx_path)[2] == (2, 5, 100)
