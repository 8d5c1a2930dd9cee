"""bnwvad-export as a subprocess: success, failures that leave no file, one-line errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from bnwvad import save_checkpoint

EXE = Path(sys.executable).parent / "bnwvad-export"


def _cli(*args, code=None, cwd=None):
    """Run the installed script (or, via `code`, python -c code with the same argv)."""
    cmd = [sys.executable, "-c", code, *args] if code else [str(EXE), *args]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


@pytest.fixture
def ckpt(tiny, tmp_path):
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, tiny(seed=5), preset="shanghaitech")
    return path


def _error_lines(stderr):
    return [ln for ln in stderr.splitlines() if ln.startswith("bnwvad-export: error:")]


def test_script_is_installed():
    assert EXE.is_file(), f"{EXE} missing: run `.venv/bin/pip install -e .`"


def test_export_succeeds_and_reports_verification(ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    r = _cli(str(ckpt), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.is_file()
    assert "verifying the written graph" in r.stderr and "verified against PyTorch" in r.stderr
    assert "max rel" in r.stderr and "outlier burst" in r.stderr
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
    assert meta["preset"] == "shanghaitech" and meta["crops"] == 10 and meta["precision"] == "fp32"
    # The explicit subcommand is the same command.
    r = _cli("onnx", str(ckpt), "-o", str(tmp_path / "m2.onnx"), "--fp16", "--opset", "18", "--no-verify")
    assert r.returncode == 0, r.stderr
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "m2.onnx")).metadata_props}
    assert meta["precision"] == "fp16" and meta["opset"] == 18


def test_failed_verification_exits_nonzero_and_leaves_no_file(ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    code = ("import sys, bnwvad.runtime.contract as t; "
            "t.TOLERANCES['onnx_fp32'] = t.Tolerance(0.0, 'rel_to_max', 'test: impossible'); "
            "from bnwvad.export.cli import main; sys.argv[0] = 'bnwvad-export'; main()")
    r = _cli(str(ckpt), "-o", str(out), code=code)
    assert r.returncode == 1
    err = _error_lines(r.stderr)
    assert len(err) == 1 and "does not reproduce the PyTorch model" in err[0] and "nothing was written" in err[0]
    assert "Traceback" not in r.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt"]


def test_bad_checkpoint_gives_one_clear_line(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"\x00not a checkpoint at all")
    out = tmp_path / "m.onnx"
    r = _cli(str(bad), "-o", str(out))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    err = _error_lines(r.stderr)
    assert len(err) == 1 and str(bad) in err[0]
    assert not out.exists()
    r = _cli(str(tmp_path / "missing.pt"), "-o", str(out))
    assert r.returncode == 1 and "no such checkpoint file" in r.stderr and not out.exists()


def test_published_state_dict_without_preset_says_so(reference_dir, tmp_path):
    r = _cli(str(reference_dir / "official_state_dict.pkl"), "-o", str(tmp_path / "m.onnx"))
    assert r.returncode == 1
    assert "--preset" in _error_lines(r.stderr)[0] and not (tmp_path / "m.onnx").exists()


def test_usage_errors(ckpt, tmp_path):
    """Usage errors are click's (exit 2); checked in-process, they need no subprocess."""
    from click.testing import CliRunner

    from bnwvad.export.cli import main

    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args])
    r = run(ckpt, "-o", tmp_path / "m.onnx", "--fp16", "--int8")
    assert r.exit_code == 2 and "exclude each other" in r.output
    r = run(ckpt, "-o", tmp_path / "m.onnx", "--preset", "kinetics")
    assert r.exit_code == 2 and "kinetics" in r.output
    r = run(ckpt, "-o", tmp_path / "m.onnx", "--int8", "--trt", tmp_path / "m.engine")
    assert r.exit_code == 2 and "TensorRT cannot run dynamic int8" in r.output
    r = run("engine", tmp_path / "m.onnx", "-o", tmp_path / "m.engine", "--min-shape", "1,2")
    assert r.exit_code == 2 and "N,C,T" in r.output
    r = run("engine", tmp_path / "m.onnx", "-o", tmp_path / "m.engine")
    assert r.exit_code == 1 and "no such ONNX file" in r.output
    r = run(ckpt, "-o", tmp_path / "m.onnx", "--opset", "11")
    assert r.exit_code == 1 and "opset 11" in r.output
    assert not list(tmp_path.glob("m.*"))


def test_int8_from_the_cli(ckpt, tmp_path):
    out = tmp_path / "q.onnx"
    r = _cli(str(ckpt), "-o", str(out), "--int8")
    assert r.returncode == 0, r.stderr
    assert "onnx_int8" in r.stderr
    proto = onnx.load(str(out))
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["precision"] == "int8"
    _assert_int8_matmuls_exact(proto)


def _assert_int8_matmuls_exact(proto):
    """The int8 graph computes the same on every CPU: its integer matmuls pass the exporter's
    no-saturation check (uint8 weights: u8 x s8 pair sums saturate the int16 of ONNX Runtime's
    AVX2 kernel on CPUs without VNNI), agree with onnx.reference's exact integer arithmetic on
    this CPU, and the head (whose output's norm is the DFM) stays fp32."""
    import numpy as np
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    from bnwvad.export.quantize import check_exact_everywhere

    integer = [n for n in proto.graph.node if n.op_type == "MatMulInteger"]
    assert integer and check_exact_everywhere(proto) == len(integer)
    head = [n.name for n in proto.graph.node if n.op_type == "MatMul" and n.input[1].startswith(("head", "out"))]
    assert len(head) == 3, head                    # head0, head1 and the score layer, all fp32
    d = next(json.loads(p.value) for p in proto.metadata_props if p.key == "feature_dim")
    rng = np.random.default_rng(0)
    x = (rng.random((1, 2, 9, d), dtype=np.float32) * 2).astype(np.float32)
    x[:, :, 4] *= 1e4                              # an outlier row, like the verification's burst
    feeds = {"features": x, "lengths": np.array([9], np.int64)}
    names = ["score", "dfm", "anomaly"]
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(names, feeds)
    with np.errstate(over="ignore", invalid="ignore"):    # its Sigmoid evaluates both branches
        want = ReferenceEvaluator(proto).run(names, feeds)
    for name, g, w in zip(names, got, want):
        rel = float(np.abs(g - w).max() / np.abs(w).max())
        assert rel < 1e-4, f"{name}: ONNX Runtime's integer matmuls differ from exact arithmetic by {rel:.3g}"


def test_int8_saturation_check_refuses_full_range_int8_weights():
    """What the check guards against: full-range int8 weights (ONNX Runtime's default)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from bnwvad.export.quantize import QuantizationError, check_exact_everywhere

    def graph(w, zp):
        g = helper.make_graph(
            [helper.make_node("MatMulInteger", ["a", "b", "", "bz"], ["y"], name="mm")], "g",
            [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, 4])],
            [helper.make_tensor_value_info("y", TensorProto.INT32, [None, 2])],
            [numpy_helper.from_array(w, "b"), numpy_helper.from_array(zp, "bz")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    ok = np.array([[64, -64], [3, 0], [0, 0], [1, 2]], np.int8)
    assert check_exact_everywhere(graph(ok, np.zeros(2, np.int8))) == 1
    assert check_exact_everywhere(graph(np.full((4, 2), 255, np.uint8), np.zeros(2, np.uint8))) == 1
    with pytest.raises(QuantizationError, match="saturate"):
        check_exact_everywhere(graph(np.array([[127, 0], [0, 0], [0, 0], [0, 0]], np.int8), np.zeros(2, np.int8)))
