"""Runners: metadata, backend choice and fallback reporting, input validation."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from _toy_onnx import TOY_CROPS, TOY_D, build_toy_onnx, toy_metadata
from bnwvad.runtime import (BackendError, InputError, ModelLoadError, ShapeLimits,
                            load_runner, meta_from_props, meta_from_sidecar, validate_inputs)
from bnwvad.runtime import runners as runners_mod


def batch(n=2, c=TOY_CROPS, t=5, d=TOY_D, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, c, t, d)).astype(np.float32), np.full(n, t, np.int64)


# -- metadata ---------------------------------------------------------------------------
def test_metadata_is_read_from_the_onnx_file(toy_onnx):
    r = load_runner(toy_onnx, "ort-cpu")
    m = r.meta
    assert (m.feature_dim, m.crops, m.frames_per_snippet, m.precision, m.preset) == (TOY_D, TOY_CROPS, 16, "fp32", "toy")
    assert m.model_config["heads"] == 2 and m.source_digest == "sha256:toy" and m.opset == 17


def test_metadata_reads_the_contracts_keys_and_no_other_spelling():
    m = meta_from_props({"crops": "5", "preset": '"xd"', "model_config": json.dumps({"feature_dim": 1024, "heads": 4})},
                        "x")
    assert (m.crops, m.preset, m.feature_dim, m.heads) == (5, "xd", 1024, 4)
    # Spellings nothing writes are not guessed at: a model without the contract's keys has no crop count.
    m = meta_from_props({"crops_expected": "5", "dataset_preset": '"xd"', "D": "1024"}, "x")
    assert (m.crops, m.preset, m.feature_dim) == (None, None, None)


def test_metadata_props_are_read_without_onnx_or_a_session(toy_onnx, tmp_path):
    import onnx

    from bnwvad.runtime.metadata import onnx_metadata_props

    want = {p.key: p.value for p in onnx.load(str(toy_onnx)).metadata_props}
    assert onnx_metadata_props(toy_onnx) == want and json.loads(want["feature_dim"]) == TOY_D
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\xff\xff")
    with pytest.raises(ModelLoadError, match="bad.onnx: not an ONNX model"):
        onnx_metadata_props(bad)


def test_metadata_disagreeing_with_the_graph_is_an_error(tmp_path):
    path = build_toy_onnx(tmp_path / "bad.onnx", metadata=toy_metadata(feature_dim=1024))
    with pytest.raises(ModelLoadError, match=r"feature_dim = 1024 but the graph's `features` input has D = 8"):
        load_runner(path, "ort-cpu")


def test_engine_sidecar_is_found_and_read(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="no metadata sidecar found"):
        meta_from_sidecar(engine)
    (tmp_path / "m.engine.json").write_text(json.dumps({"metadata": toy_metadata()}))
    assert meta_from_sidecar(engine).crops == TOY_CROPS


def test_not_an_onnx_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "m.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match=r"m.onnx: ONNX Runtime could not load the model"):
        load_runner(bad, "ort-cpu")
    with pytest.raises(ModelLoadError, match="no such model file"):
        load_runner(tmp_path / "missing.onnx", "ort-cpu")


# -- backends ----------------------------------------------------------------------------
def test_cpu_backend_reports_what_runs_and_threads_are_settable(toy_onnx):
    r = load_runner(toy_onnx, "ort-cpu", threads=1)
    assert (r.requested, r.backend, r.providers, r.fallback) == ("ort-cpu", "ort-cpu", ["CPUExecutionProvider"], None)
    assert r.session.get_session_options().intra_op_num_threads == 1
    out = r.run(*batch())
    assert set(out) == {"score", "dfm", "anomaly"} and out["anomaly"].shape == (2, 5)


def test_backend_names_and_file_kinds_are_checked(toy_onnx, tmp_path):
    with pytest.raises(BackendError, match="expected one of auto, ort-cpu"):
        load_runner(toy_onnx, "cuda")
    with pytest.raises(BackendError, match="backend 'tensorrt' needs a serialized engine"):
        load_runner(toy_onnx, "tensorrt")
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"x")
    with pytest.raises(BackendError, match="runs only on backend 'tensorrt'"):
        load_runner(engine, "ort-cpu")


def test_auto_picks_cpu_without_cuda_and_tensorrt_for_engines(tmp_path):
    from bnwvad.runtime.runners import resolve_backend

    onnx_path = tmp_path / "m.onnx"
    assert resolve_backend(onnx_path, "auto", ["CPUExecutionProvider"]) == "ort-cpu"
    assert resolve_backend(onnx_path, "auto", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == "ort-cuda"
    assert resolve_backend(onnx_path, "auto", ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                               "CPUExecutionProvider"]) == "ort-cuda"
    assert resolve_backend(tmp_path / "m.engine", "auto", []) == "tensorrt"


class _FakeOrt:
    """Stands in for an onnxruntime-gpu whose CUDA libraries are missing: it lists the GPU
    providers as available, but every session silently runs on CPU (what ORT does)."""

    def __init__(self, real, available, runs_on):
        self._real, self._available, self._runs_on = real, available, runs_on
        self.__version__ = real.__version__
        self.SessionOptions = real.SessionOptions
        self.GraphOptimizationLevel = real.GraphOptimizationLevel
        self.asked = None
        self.sessions = []          # the SessionOptions of every session opened

    def get_available_providers(self):
        return list(self._available)

    def InferenceSession(self, path, sess_options=None, providers=None):  # noqa: N802 - ORT's name
        self.asked = providers
        self.sessions.append(sess_options)
        session = self._real.InferenceSession(path, sess_options=sess_options,
                                              providers=["CPUExecutionProvider"])
        runs_on = list(self._runs_on)

        class Session:
            def __getattr__(self, name):
                return getattr(session, name)

            def get_providers(self):
                return runs_on
        return Session()


@pytest.fixture
def fake_ort(monkeypatch):
    import onnxruntime

    def install(available, runs_on):
        fake = _FakeOrt(onnxruntime, available, runs_on)
        monkeypatch.setattr(runners_mod, "_import_ort", lambda: fake)
        return fake
    return install


def test_silent_cuda_fallback_is_detected_warned_or_raised(toy_onnx, fake_ort):
    fake = fake_ort(["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"])
    with pytest.warns(RuntimeWarning, match=r"session runs on \['CPUExecutionProvider'\] \(ort-cpu\)"):
        r = load_runner(toy_onnx, "ort-cuda")
    assert fake.asked[0] == ("CUDAExecutionProvider", {"device_id": "0", "use_tf32": "0"})
    assert (r.requested, r.backend) == ("ort-cuda", "ort-cpu")
    assert "could not be initialised" in r.fallback and "onnxruntime-gpu" in r.fallback
    assert r.describe() == "ort-cpu [CPUExecutionProvider] (asked for ort-cuda)"
    with pytest.raises(BackendError, match=r"asked ONNX Runtime for .*CUDAExecutionProvider.* runs on"):
        load_runner(toy_onnx, "ort-cuda", strict=True)


def test_missing_provider_in_the_installed_build_is_reported_before_loading(toy_onnx, fake_ort):
    fake_ort(["CPUExecutionProvider"], ["CPUExecutionProvider"])
    with pytest.raises(BackendError, match=r"needs TensorrtExecutionProvider, but the installed onnxruntime"):
        load_runner(toy_onnx, "ort-trt", strict=True)
    with pytest.warns(RuntimeWarning, match="offers only"):
        r = load_runner(toy_onnx, "ort-trt")
    assert r.backend == "ort-cpu" and r.fallback


def test_tensorrt_provider_falling_back_to_cuda_is_reported(toy_onnx, fake_ort):
    fake = fake_ort(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
                    ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.warns(RuntimeWarning, match=r"\(ort-cuda\)"):
        r = load_runner(toy_onnx, "ort-trt")
    assert r.backend == "ort-cuda" and r.device == "cuda"
    trt_opts = dict(fake.asked[0][1])
    assert trt_opts["trt_profile_max_shapes"] == f"features:32x10x4096x{TOY_D},lengths:32"
    assert r.limits == ShapeLimits()      # the TensorRT profile limits only apply when it runs
    # D for the profile came from the file's metadata: one session, not a second one to peek at D.
    assert len(fake.sessions) == 1


def test_session_config_entries_reach_onnx_runtime(toy_onnx, fake_ort):
    fake = fake_ort(["CPUExecutionProvider"], ["CPUExecutionProvider"])
    load_runner(toy_onnx, "ort-cpu", session_config={"session.intra_op.allow_spinning": "0"})
    assert fake.sessions[0].get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_auto_accepts_a_fallback_even_when_strict(toy_onnx, fake_ort):
    fake_ort(["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"])
    with pytest.warns(RuntimeWarning):
        r = load_runner(toy_onnx, "auto", strict=True)
    assert (r.requested, r.backend) == ("ort-cuda", "ort-cpu")


def test_no_fallback_no_warning(toy_onnx, fake_ort):
    fake_ort(["CUDAExecutionProvider", "CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = load_runner(toy_onnx, "ort-cuda", strict=True)
    assert (r.backend, r.device, r.fallback) == ("ort-cuda", "cuda", None)


def test_native_tensorrt_without_the_package_says_how_to_fix(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)     # import tensorrt -> ImportError
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    (tmp_path / "m.engine.json").write_text(json.dumps(toy_metadata()))
    with pytest.raises(BackendError, match=r"needs the `tensorrt` Python package.*pip install 'bnwvad\[tensorrt\]'"):
        load_runner(engine)


# -- validation --------------------------------------------------------------------------
@pytest.mark.parametrize("mutate, message", [
    (lambda f, l: (f.astype(np.float64), l), r"dtype float64; expected float32.*astype\(np.float32\)"),
    (lambda f, l: (f[0], l), r"shape \(3, 5, 8\) \(3 dimensions\); expected \(N, C, T, D\)"),
    (lambda f, l: (f[..., :4], l), r"D = 4 \(shape \(2, 3, 5, 4\)\); the model expects D = 8"),
    (lambda f, l: (f[:, :2], l), r"2 crops .* the model expects 3"),
    (lambda f, l: (f, np.array([5, 6])), r"video 1 has length 6; expected 1 <= length <= T = 5"),
    (lambda f, l: (f, np.array([0, 5])), r"video 0 has length 0"),
    (lambda f, l: (f, l[:1]), r"lengths: shape \(1,\); expected \(2,\)"),
    (lambda f, l: (f, l.astype(np.float32)), r"lengths: dtype float32; expected integers"),
    (lambda f, l: (np.where(np.arange(8) == 3, np.nan, f).astype(np.float32), l),
     r"nan at video 0, crop 0, snippet 0, dim 3; expected finite"),
    (lambda f, l: (np.full_like(f, np.inf), l), r"inf at video 0"),
])
def test_inputs_are_validated_with_received_expected_and_fix(toy_onnx, mutate, message):
    r = load_runner(toy_onnx, "ort-cpu")
    f, l = mutate(*batch())
    with pytest.raises(InputError, match=message):
        r.run(f, l)


def test_shape_limits_of_an_engine_profile_are_enforced(toy_onnx):
    r = load_runner(toy_onnx, "ort-cpu")
    f, l = batch(t=9)
    with pytest.raises(InputError, match=r"T = 9 .* outside what this backend was built for, \[1, 8\]"):
        validate_inputs(f, l, r.meta, limits=ShapeLimits(max_t=8))


# -- GPU paths (run where a GPU is) ---------------------------------------------------------
@pytest.mark.gpu
def test_cuda_backend_really_runs_on_cuda(toy_onnx):
    r = load_runner(toy_onnx, "ort-cuda", strict=True)
    assert r.providers[0] == "CUDAExecutionProvider"
    ref = load_runner(toy_onnx, "ort-cpu").run(*batch())
    out = r.run(*batch())
    for k in ref:
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_tensorrt_provider_runs(toy_onnx, tmp_path):
    r = load_runner(toy_onnx, "ort-trt", strict=True,
                    trt_options={"trt_engine_cache_path": str(tmp_path)})
    assert r.providers[0] == "TensorrtExecutionProvider"
    out = r.run(*batch())
    ref = load_runner(toy_onnx, "ort-cpu").run(*batch())
    np.testing.assert_allclose(out["anomaly"], ref["anomaly"], rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
def test_native_tensorrt_engine_matches_onnx_runtime(toy_onnx, tmp_path):
    """Builds an engine from the toy graph with the TensorRT builder (what bnwvad-export does
    for real models), writes the sidecar, and checks the native runner against ORT CPU."""
    trt = pytest.importorskip("tensorrt")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(toy_onnx.read_bytes())
    profile = builder.create_optimization_profile()
    profile.set_shape("features", (1, 1, 1, TOY_D), (2, 3, 16, TOY_D), (4, 3, 64, TOY_D))
    profile.set_shape("lengths", (1,), (2,), (4,))
    config = builder.create_builder_config()
    config.add_optimization_profile(profile)
    engine = tmp_path / "toy.engine"
    engine.write_bytes(bytes(builder.build_serialized_network(network, config)))
    (tmp_path / "toy.engine.json").write_text(json.dumps(toy_metadata()))
    r = load_runner(engine)
    assert r.backend == "tensorrt" and r.limits.max_t == 64
    f, l = batch(n=3, t=7)
    l[1] = 2
    out = r.run(f, l)
    ref = load_runner(toy_onnx, "ort-cpu").run(f, l)
    for k in ref:
        for i, n in enumerate(l):
            np.testing.assert_allclose(out[k][i, :n], ref[k][i, :n], rtol=1e-4, atol=1e-5)



def test_metadata_of_another_format_or_a_newer_version_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="metadata format = 'other'; expected 'bnwvad-onnx'"):
        load_runner(build_toy_onnx(tmp_path / "a.onnx", metadata=toy_metadata(format="other")), "ort-cpu")
    with pytest.raises(ModelLoadError, match="format_version 2 is newer than this runtime reads"):
        load_runner(build_toy_onnx(tmp_path / "b.onnx", metadata=toy_metadata(format_version=2)), "ort-cpu")
