"""bnwvad-infer: input forms and layouts, bad files, outputs, events, plots; in-process on the toy
model (fast), and as a subprocess on the exported published weights."""
from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from _helpers import run_without_torch
from _toy_onnx import TOY_CROPS, TOY_D, toy_reference
from bnwvad.runtime import load_results
from bnwvad.runtime.cli import main

REPO = Path(__file__).resolve().parents[2]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def write_crops(folder: Path, video: str, arr: np.ndarray) -> list[Path]:
    """(C, T, D) -> <folder>/<video>__<k>.npy, one (T, D) file per crop."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, crop in enumerate(arr):
        paths.append(folder / f"{video}__{k}.npy")
        np.save(paths[-1], crop)
    return paths


def feats(t, crops=TOY_CROPS, seed=0):
    return np.random.default_rng(seed).normal(size=(crops, t, TOY_D)).astype(np.float32)


# -- input forms -------------------------------------------------------------------------
def test_per_crop_files_directory_stacked_file_and_list_file(toy_onnx, tmp_path):
    a, b = feats(9, seed=1), feats(4, seed=2)
    write_crops(tmp_path / "crops", "a", a)
    write_crops(tmp_path / "crops", "b", b)
    np.save(tmp_path / "stacked_a.npy", a.transpose(1, 0, 2))                 # (T, C, D)
    (tmp_path / "test.list").write_text("".join(f"crops/b__{k}.npy\n" for k in range(3)))
    # b comes both from the folder and from the list: the same files, scored once.
    r = invoke(tmp_path / "crops", tmp_path / "stacked_a.npy", tmp_path / "test.list",
               "--model", toy_onnx, "--out", tmp_path / "out")
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    for name, arr in (("a", a), ("b", b), ("stacked_a", a)):
        got = np.load(out / f"{name}.npy", allow_pickle=False)
        assert got.dtype == np.float32 and got.shape == (arr.shape[1],)
        np.testing.assert_allclose(got, toy_reference(arr)["anomaly"], rtol=1e-5, atol=1e-6)
    res = load_results(out / "results.npz")
    assert list(res) == ["a", "b", "stacked_a"] and res["a"]["crops"] == 3
    np.testing.assert_allclose(res["b"]["dfm"], toy_reference(b)["dfm"], rtol=1e-5, atol=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["backend"] == "ort-cpu" and summary["failures"] == {}
    assert summary["videos"]["a"]["frames"] == 9 * 16
    assert "stacked_a" in r.stdout and "max" in r.stdout


def test_list_file_paths_resolve_against_root(toy_onnx, tmp_path):
    write_crops(tmp_path / "data" / "test", "v_label_A", feats(5))
    lst = tmp_path / "lists" / "Test.list"
    lst.parent.mkdir()
    lst.write_text("".join(f"test/v_label_A__{k}.npy\n" for k in range(3)))
    r = invoke(lst, "--root", tmp_path / "data", "--model", toy_onnx, "--out", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "v_label_A.npy").is_file()


def test_a_lone_crop_file_is_not_silently_a_one_crop_video(toy_onnx, tmp_path):
    np.save(tmp_path / "x__3.npy", feats(5)[0])
    r = invoke(tmp_path / "x__3.npy", "--model", toy_onnx, "--out", tmp_path / "out")
    assert r.exit_code == 1
    assert "video 'x' has crop files [3], missing [0, 1, 2]" in r.stderr
    assert "--no-crops-from-names" in r.stderr and not (tmp_path / "out" / "x.npy").exists()
    # Asked explicitly: each file is its own one-crop video (and the crop check is relaxed).
    r = invoke(tmp_path / "x__3.npy", "--no-crops-from-names", "--any-crops",
               "--model", toy_onnx, "--out", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "x__3.npy").is_file()


def test_one_crop_file_needs_the_crop_check_relaxed(toy_onnx, tmp_path):
    np.save(tmp_path / "single.npy", feats(6)[0])                               # (T, D)
    r = invoke(tmp_path / "single.npy", "--model", toy_onnx, "--out", tmp_path / "out")
    assert r.exit_code == 1 and "'single': 1 crop(s); the model expects 3" in r.stderr
    r = invoke(tmp_path / "single.npy", "--crops", "1", "--model", toy_onnx, "--out", tmp_path / "out")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("shape, flag, message", [
    ((3, 3, TOY_D), None, r"is ambiguous: its first two axes are equal \(3\)"),
    ((3, 7, TOY_D), None, r"looks like \(C, T, D\) = \(3, 7, 8\)"),
    ((7, 4, TOY_D), None, r"neither axis of \(7, 4\) matches the model's 3 crops"),
    ((7, 3, TOY_D), "TD", r"--layout TD says every file is one crop"),
])
def test_ambiguous_3d_layouts_are_errors_that_name_the_flag(toy_onnx, tmp_path, shape, flag, message):
    np.save(tmp_path / "v.npy", np.ones(shape, np.float32))
    args = [tmp_path / "v.npy", "--model", toy_onnx, "--out", tmp_path / "out"]
    r = invoke(*args, *(["--layout", flag] if flag else []))
    assert r.exit_code == 1
    assert re.search(message, r.stderr), r.stderr
    assert not (tmp_path / "out" / "v.npy").exists()


def test_explicit_layouts_read_stacked_files(toy_onnx, tmp_path):
    v = feats(3)                                                     # (C, T, D) with T == C == 3
    np.save(tmp_path / "tcd.npy", v.transpose(1, 0, 2))
    np.save(tmp_path / "ctd.npy", v)
    for name, lay in (("tcd", "TCD"), ("ctd", "CTD")):
        r = invoke(tmp_path / f"{name}.npy", "--layout", lay, "--model", toy_onnx, "--out", tmp_path / "out")
        assert r.exit_code == 0, r.output
        np.testing.assert_allclose(np.load(tmp_path / "out" / f"{name}.npy"), toy_reference(v)["anomaly"],
                                   rtol=1e-5, atol=1e-6)


def test_the_same_video_name_from_two_folders_is_refused(toy_onnx, tmp_path):
    write_crops(tmp_path / "a", "v", feats(4))
    write_crops(tmp_path / "b", "v", feats(4))
    r = invoke(tmp_path / "a", tmp_path / "b", "--model", toy_onnx, "--out", tmp_path / "out")
    assert r.exit_code == 1 and "video name 'v' comes from several inputs" in r.stderr
    assert not (tmp_path / "out" / "v.npy").exists()


# -- bad files: one clear error each, nothing written for them, the rest completes ---------
def _truncate(p):
    np.save(p, feats(6)[0])
    p.write_bytes(p.read_bytes()[:-40])


def _pickled_object_array(p):
    np.save(p, np.array([{"x": 1}] * 6, dtype=object), allow_pickle=True)


def _plain_pickle(p):
    p.write_bytes(pickle.dumps({"features": [1.0, 2.0]}))


def _npy(arr):
    return lambda p: np.save(p, arr)


def _nan(p):
    a = feats(6)[0]
    a[2, 5] = np.nan
    np.save(p, a)


def _inf(p):
    a = feats(6)[0]
    a[4, 1] = -np.inf
    np.save(p, a)


BAD = {
    "corrupted": (lambda p: p.write_bytes(b"\x00\x01garbage" * 20), r"not a \.npy file \(starts with"),
    "truncated": (_truncate, r"truncated: its header announces shape \(6, 8\) float32 \(192 bytes of data\) but the file holds 152"),
    "empty_file": (lambda p: p.write_bytes(b""), r"the file is empty \(0 bytes\)"),
    "zero_T": (_npy(np.zeros((0, TOY_D), np.float32)), r"shape \(0, 8\) has T = 0 snippets; expected at least 1"),
    "wrong_D": (_npy(np.ones((6, 5), np.float32)), r"feature dimension D = 5 \(shape \(6, 5\)\); expected D = 8"),
    "wrong_dtype": (_npy(np.ones((6, TOY_D), np.int32)), r"dtype int32; expected floating-point features"),
    "wrong_ndim": (_npy(np.ones(6, np.float32)), r"array of shape \(6,\) \(1 dimensions\); expected \(T, D\)"),
    "nan": (_nan, r"contains NaN or inf \(first at index \(2, 5\)\)"),
    "inf": (_inf, r"contains NaN or inf \(first at index \(4, 1\)\)"),
    "pickled_object_array": (_pickled_object_array, r"holds a pickled object array, which is never loaded"),
    "plain_pickle": (_plain_pickle, r"a Python pickle, not a \.npy array \(never loaded"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_bad_file_gets_its_own_error_and_no_output(toy_onnx, tmp_path, case):
    make, message = BAD[case]
    write_crops(tmp_path / "in", "good", feats(6, seed=1))
    write_crops(tmp_path / "in", "bad", feats(6, seed=2))
    bad_file = tmp_path / "in" / "bad__1.npy"
    make(bad_file)
    out = tmp_path / "out"
    r = invoke(tmp_path / "in", "--model", toy_onnx, "--out", out)
    assert r.exit_code == 1
    assert str(bad_file) in r.stderr and re.search(message, r.stderr), r.stderr
    assert not (out / "bad.npy").exists() and (out / "good.npy").is_file()
    assert list(load_results(out / "results.npz")) == ["good"]
    failures = json.loads((out / "summary.json").read_text())["failures"]
    assert list(failures) == ["bad"] and str(bad_file) in failures["bad"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]      # nothing partial


def test_a_folder_that_is_not_a_run_is_refused_unless_overwrite(toy_onnx, tmp_path):
    write_crops(tmp_path / "in", "v", feats(5))
    out = tmp_path / "out"
    out.mkdir()
    (out / "v.npy").write_bytes(b"old")
    r = invoke(tmp_path / "in", "--model", toy_onnx, "--out", out)
    assert r.exit_code == 2, r.output
    assert f"--out {out}: not empty (1 entries: v.npy) and holds no summary.json" in r.stderr
    assert "--overwrite" in r.stderr and (out / "v.npy").read_bytes() == b"old"
    # --overwrite writes into it; it removes nothing no run listed, and replaces atomically.
    (out / "notes.txt").write_text("mine")
    r = invoke(tmp_path / "in", "--model", toy_onnx, "--out", out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert np.load(out / "v.npy").shape == (5,) and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "results.npz", "summary.json", "v.npy"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"] == ["v.npy", "results.npz", "summary.json"]


def test_summary_records_the_weights_digest_and_every_file_written(toy_onnx, tmp_path):
    write_crops(tmp_path / "in", "a", feats(6, seed=1))
    out = tmp_path / "out"
    r = invoke(tmp_path / "in", "--model", toy_onnx, "--out", out, "--threshold", 0.1, "--plot")
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    assert s["format"] == "bnwvad-infer-run" and s["status"] == "complete" and s["interrupted"] is False
    assert (s["model"]["weights_digest"], s["model"]["precision"]) == ("sha256:toyw", "fp32")
    assert s["model"]["digest_of"] == "weights (model metadata)"
    assert s["videos"]["a"]["files"] == ["a.npy", "plots/a.png"]
    assert s["files"] == ["a.npy", "plots/a.png", "results.npz", "events.json", "summary.json"]
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert on_disk == sorted(s["files"])                     # relative paths, exactly what is there


def test_without_a_digest_in_the_metadata_the_model_files_sha256_names_it(tmp_path):
    import hashlib

    from _toy_onnx import build_toy_onnx, toy_metadata

    meta = toy_metadata()
    del meta["weights_digest"]
    model = build_toy_onnx(tmp_path / "old.onnx", metadata=meta)
    write_crops(tmp_path / "in", "a", feats(6))
    r = invoke(tmp_path / "in", "--model", model, "--out", tmp_path / "out")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "out" / "summary.json").read_text())["model"]
    assert m["weights_digest"] == "file-sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
    assert m["digest_of"] == "model file"


def test_a_rerun_of_the_same_model_replaces_its_outputs_and_keeps_no_stale_score(toy_onnx, tmp_path):
    """The issue's case: the second run's failed video must not keep the first run's score, nor
    its plot or events; an evaluation of the folder then sees only the second run's outputs."""
    write_crops(tmp_path / "in", "a", feats(6, seed=1))
    write_crops(tmp_path / "in", "b", feats(7, seed=2))
    out = tmp_path / "out"
    r = invoke(tmp_path / "in", "--model", toy_onnx, "--out", out, "--threshold", 0.1, "--plot")
    assert r.exit_code == 0 and (out / "b.npy").is_file() and (out / "plots" / "b.png").is_file()
    (tmp_path / "in" / "b__1.npy").write_bytes(b"\x00garbage")          # b fails in the re-run
    r = invoke(tmp_path / "in", "--model", toy_onnx, "--out", out)
    assert r.exit_code == 1 and "b__1.npy" in r.stderr
    assert "replacing the earlier run of this model" in r.stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["a.npy", "results.npz", "summary.json"]
    s = json.loads((out / "summary.json").read_text())
    assert list(s["videos"]) == ["a"] and list(s["failures"]) == ["b"] and "b.npy" not in s["files"]


def test_another_models_folder_is_refused_unless_overwrite(toy_onnx, tmp_path):
    from _toy_onnx import build_toy_onnx, toy_metadata

    other = build_toy_onnx(tmp_path / "other.onnx", metadata=toy_metadata(weights_digest="sha256:other"),
                           seed=1)
    write_crops(tmp_path / "in", "a", feats(6, seed=1))
    write_crops(tmp_path / "in", "b", feats(7, seed=2))
    out = tmp_path / "out"
    assert invoke(tmp_path / "in", "--model", toy_onnx, "--out", out, "--plot").exit_code == 0
    (out / "notes.txt").write_text("mine")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    r = invoke(tmp_path / "in", "--model", other, "--out", out)
    assert r.exit_code == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "holds the outputs of another model (weights sha256:toyw (fp32)" in err[0]
    assert "this model is sha256:other (fp32)" in err[0] and "--overwrite to remove the 6 file(s)" in err[0]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before      # untouched
    # --overwrite removes exactly what that run listed; the user's own file stays.
    (tmp_path / "in" / "b__0.npy").unlink()
    r = invoke(tmp_path / "in", "--model", other, "--out", out, "--overwrite")
    assert r.exit_code == 1
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "a.npy", "notes.txt", "results.npz", "summary.json"]
    assert json.loads((out / "summary.json").read_text())["model"]["weights_digest"] == "sha256:other"


def test_outputs_get_the_umask_permissions_without_touching_the_umask(toy_onnx, tmp_path, monkeypatch):
    import os

    from bnwvad import atomic

    write_crops(tmp_path / "in", "v", feats(5))
    # The umask is read once at import: a write never sets it (other threads would race).
    monkeypatch.setattr(os, "umask", lambda *a: pytest.fail("os.umask called during a run"))
    r = invoke(tmp_path / "in", "--model", toy_onnx, "--out", tmp_path / "out")
    assert r.exit_code == 0, r.output
    for name in ("v.npy", "results.npz", "summary.json"):
        assert (tmp_path / "out" / name).stat().st_mode & 0o777 == 0o666 & ~atomic._UMASK


def test_model_errors_exit_2_without_outputs(tmp_path):
    write_crops(tmp_path / "in", "v", feats(5))
    (tmp_path / "m.onnx").write_bytes(b"junk")
    r = invoke(tmp_path / "in", "--model", tmp_path / "m.onnx", "--out", tmp_path / "out")
    assert r.exit_code == 2 and "ONNX Runtime could not load the model" in r.stderr
    assert not (tmp_path / "out").exists()


# -- events, calibration, plots ------------------------------------------------------------
def test_events_with_a_given_threshold(toy_onnx, tmp_path):
    v = feats(20, seed=3)
    write_crops(tmp_path / "in", "v", v)
    ref = toy_reference(v)["anomaly"]
    thr = float(np.quantile(ref, 0.7))
    r = invoke(tmp_path / "in", "--model", toy_onnx, "--out", tmp_path / "out", "--threshold", thr,
               "--fps", 24, "--plot")
    assert r.exit_code == 0, r.output
    ev = json.loads((tmp_path / "out" / "events.json").read_text())
    assert ev["threshold"] == thr and ev["threshold_source"] == "given" and ev["fps"] == 24
    above = ref > thr
    assert sum(e["end_snippet"] - e["start_snippet"] for e in ev["videos"]["v"]) == above.sum()
    e0 = ev["videos"]["v"][0]
    assert above[e0["start_snippet"]:e0["end_snippet"]].all()
    assert e0["start_frame"] == 16 * e0["start_snippet"] and e0["end_s"] == pytest.approx(e0["end_frame"] / 24)
    assert e0["peak"] == pytest.approx(ref[e0["start_snippet"]:e0["end_snippet"]].max(), rel=1e-5)
    png = tmp_path / "out" / "plots" / "v.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrated_threshold_meets_the_false_alarm_rate(toy_onnx, tmp_path):
    for i in range(4):
        write_crops(tmp_path / "normal", f"n{i}", feats(50, seed=10 + i))
    write_crops(tmp_path / "in", "v", feats(30, seed=3))
    r = invoke(tmp_path / "in", "--model", toy_onnx, "--out", tmp_path / "out",
               "--calibrate", tmp_path / "normal", "--false-alarm-rate", 0.05)
    assert r.exit_code == 0, r.output
    ev = json.loads((tmp_path / "out" / "events.json").read_text())
    cal = ev["calibration"]
    assert ev["threshold_source"] == "calibrated" and cal["videos"] == 4 and cal["snippets"] == 200
    assert 0 < cal["achieved_rate"] <= 0.05
    normal = np.concatenate([toy_reference(feats(50, seed=10 + i))["anomaly"] for i in range(4)])
    assert np.mean(normal > ev["threshold"]) <= 0.05


def test_threshold_and_calibrate_are_exclusive(toy_onnx, tmp_path):
    r = invoke("x.npy", "--model", toy_onnx, "--out", tmp_path, "--threshold", 1, "--calibrate", "y")
    assert r.exit_code == 2 and "not both" in r.output


# -- as a subprocess: the published weights, and no torch -----------------------------------
def _bnwvad_infer() -> list[str]:
    exe = Path(sys.executable).with_name("bnwvad-infer")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "bnwvad.runtime.cli"]


@pytest.mark.parametrize("name, extra", [
    ("infer_xd_5crop_T137", []),
    ("infer_ucf_10crop_T64", ["--any-crops"]),
    ("infer_1crop_T1", ["--any-crops"]),
    ("infer_1crop_T2", ["--any-crops"]),
])
def test_bnwvad_infer_reproduces_the_published_outputs(xd_onnx, reference_dir, tmp_path, name, extra):
    ref = np.load(reference_dir / f"{name}.npz")
    write_crops(tmp_path / "in", name, ref["features"])
    proc = subprocess.run([*_bnwvad_infer(), *sorted(map(str, (tmp_path / "in").iterdir())),
                           "--model", str(xd_onnx), "--out", str(tmp_path / "out"), *extra],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "out" / f"{name}.npy", allow_pickle=False)
    want = ref["anomaly_crop_mean"]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), np.abs(got - want).max()
    res = load_results(tmp_path / "out" / "results.npz")[name]
    for k in ("score", "dfm"):
        w = ref[k].mean(0)
        assert np.abs(res[k] - w).max() <= 1e-4 * np.abs(w).max()


def test_runtime_and_cli_work_with_torch_unimportable(toy_onnx, tmp_path):
    write_crops(tmp_path / "in", "v", feats(12))
    np.save(tmp_path / "in" / "w__0.npy", np.ones((3, 5), np.float32))     # a bad file on the way
    proc = run_without_torch("bnwvad.runtime.cli", tmp_path / "in", "--model", toy_onnx, "--out", tmp_path / "out",
                             "--threshold", "0.1", "--plot", "--any-crops", text=True, timeout=120, cwd=tmp_path)
    assert "NO-TORCH-OK 1" in proc.stderr, proc.stdout + proc.stderr
    assert (tmp_path / "out" / "v.npy").is_file() and (tmp_path / "out" / "plots" / "v.png").is_file()
    assert "w__0.npy: feature dimension D = 5" in proc.stderr


def test_session_options_reach_the_runner(toy_onnx, tmp_path, monkeypatch):
    from bnwvad.runtime import runners

    seen = {}
    real = runners.load_runner

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **kw)
    monkeypatch.setattr(runners, "load_runner", spy)
    write_crops(tmp_path / "in", "v", feats(5))
    r = invoke(tmp_path / "in", "--model", toy_onnx, "--out", tmp_path / "out", "--threads", 1, "--no-arena",
               "--backend", "ort-cpu", "--strict")
    assert r.exit_code == 0, r.output
    assert (seen["threads"], seen["arena"], seen["strict"]) == (1, False, True)


# -- output folders that cannot be used: found before any scoring, one line, exit 2 ------------
def _out_cases(tmp_path):
    (tmp_path / "a_file").write_text("x")
    return {
        "under_a_file": (tmp_path / "a_file" / "out", "cannot be created: {} is a file, not a folder"
                         .format(tmp_path / "a_file")),
        "is_a_file": (tmp_path / "a_file", "is a file, not a folder"),
        # Root ignores permission bits, so a read-only folder is tested through /proc (no new
        # folders there, for root either) and, for other users, a chmod 555 folder below.
        "proc": (Path("/proc/bnwvad-test-out"), "cannot create the folder"),
    }


@pytest.mark.parametrize("case", ["under_a_file", "is_a_file", "proc"])
def test_an_out_that_cannot_be_written_is_found_before_any_scoring(toy_onnx, tmp_path, case):
    out, message = _out_cases(tmp_path)[case]
    write_crops(tmp_path / "in", "v", feats(5))
    write_crops(tmp_path / "normal", "n", feats(9))
    proc = subprocess.run([*_bnwvad_infer(), str(tmp_path / "in"), "--model", str(toy_onnx), "--out", str(out),
                           "--calibrate", str(tmp_path / "normal")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    # One line, naming the folder; not even the model line, no calibration, no traceback.
    assert len(lines) == 1 and lines[0].startswith(f"error: --out {out}: ") and message in lines[0], lines
    assert not (tmp_path / "a_file" / "out").exists() and (tmp_path / "a_file").read_text() == "x"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root ignores permission bits (the /proc case covers a folder nobody can write)")
def test_a_read_only_out_is_found_before_any_scoring(toy_onnx, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    write_crops(tmp_path / "in", "v", feats(5))
    try:
        r = invoke(tmp_path / "in", "--model", toy_onnx, "--out", ro / "out")
    finally:
        ro.chmod(0o755)
    assert r.exit_code == 2 and f"--out {ro / 'out'}: cannot create the folder" in r.stderr


def test_model_errors_leave_no_out_folder_behind(tmp_path):
    write_crops(tmp_path / "in", "v", feats(5))
    (tmp_path / "m.onnx").write_bytes(b"junk")
    r = invoke(tmp_path / "in", "--model", tmp_path / "m.onnx", "--out", tmp_path / "new" / "out")
    assert r.exit_code == 2 and not (tmp_path / "new").exists()


# -- SIGINT / SIGTERM: what is done is written and recorded, exit 130 --------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_writes_what_it_finished_and_exits_130(toy_onnx, tmp_path, sig):
    # Many videos and --plot (tens of ms each): the run lasts seconds, the signal comes mid-run.
    src = tmp_path / "in"
    src.mkdir()
    for i in range(150):
        np.save(src / f"v{i:03d}.npy", feats(12, seed=i).transpose(1, 0, 2))
    out = tmp_path / "out"
    proc = subprocess.Popen([*_bnwvad_infer(), str(src), "--model", str(toy_onnx), "--out", str(out),
                             "--plot", "--threshold", "0.1", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("v*.npy")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"interrupted ({sig.name}) after scoring" in err and "Traceback" not in err
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "interrupted" and s["interrupted"] is True and s["signal"] == sig.name
    done = set(s["videos"])
    assert 1 <= len(done) < 150 and len(done) + len(s["not_scored"]) == 150
    # Every finished video is complete (scores, plot, events) and every file is recorded.
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert on_disk == sorted(s["files"])
    assert {p.stem for p in out.glob("v*.npy")} == done == {p.stem for p in (out / "plots").glob("*.png")}
    assert set(load_results(out / "results.npz")) == done
    assert set(json.loads((out / "events.json").read_text())["videos"]) == done


# -- what bnwvad-infer prints ----------------------------------------------------------------
def test_help_names_folders_files_and_every_exit_status():
    r = CliRunner().invoke(main, ["--help"], terminal_width=100)
    assert r.exit_code == 0
    text = r.output
    assert re.search(r"-o, --out DIR\s+Output FOLDER", text)
    assert re.search(r"--device-id INTEGER RANGE\s+CUDA device", text)
    assert re.search(r"-m, --model FILE", text) and "--sidecar FILE" in text and "--root DIR" in text
    assert "TEXT" not in text
    for code in ("0 ", "1 ", "2 ", "130 "):
        assert re.search(rf"^\s+{code}\s*\S", text, re.M), code
    assert "interrupted" in text and "nothing could run" in text


def test_the_first_line_gives_the_memory_budget_and_its_source(toy_onnx, tmp_path):
    write_crops(tmp_path / "in", "v", feats(5))
    r = invoke(tmp_path / "in", "--model", toy_onnx, "--out", tmp_path / "out")
    assert r.exit_code == 0
    first = r.stderr.splitlines()[0]
    # bytes, then which limit set them: a cgroup's, the host's MemAvailable, or a given one.
    assert re.search(r"; memory budget [\d.]+ [KMGT]?i?B\b.*\((.*(cgroup|MemAvailable|given).*)\)$", first), first


@pytest.mark.skipif("CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(),
                    reason="needs an onnxruntime without CUDA (the fallback is what is printed)")
def test_the_backend_fallback_warning_is_printed_once(toy_onnx, tmp_path):
    write_crops(tmp_path / "in", "v", feats(5))
    proc = subprocess.run([*_bnwvad_infer(), str(tmp_path / "in"), "--model", str(toy_onnx),
                           "--out", str(tmp_path / "out"), "--backend", "ort-cuda"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("needs CUDAExecutionProvider, but the installed onnxruntime") == 1, proc.stderr
    assert "is not in available provider names" not in proc.stderr       # ONNX Runtime's own words for it


# -- video inputs (bnwvad-infer VIDEO --extractor; the rest in test_extract_cli.py) ---------------
def test_a_video_input_without_extractor_is_a_named_error_suggesting_it(toy_onnx, tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not decoded: refused before anything runs")
    r = invoke(video, "--model", toy_onnx, "--out", tmp_path / "out")
    assert r.exit_code == 2
    assert "clip.mp4: a video file" in r.output and "--extractor i3d.onnx" in r.output
    assert "bnwvad-extract" in r.output and not (tmp_path / "out").exists()


def test_help_mentions_video_inputs_and_the_extractor():
    r = CliRunner().invoke(main, ["--help"], terminal_width=100)
    assert r.exit_code == 0 and "--extractor FILE" in r.output and ".mp4" in r.output


# -- windowed scoring (--window) -----------------------------------------------------------------
def test_window_gives_what_the_streaming_scorer_gives(toy_onnx, tmp_path):
    from bnwvad.runtime import load_runner
    from bnwvad.runtime.stream import StreamScorer

    a, b = feats(40, seed=1), feats(23, seed=2)
    write_crops(tmp_path / "in", "a", a)
    write_crops(tmp_path / "in", "b", b)
    r = invoke(tmp_path / "in", "--model", toy_onnx, "--out", tmp_path / "out",
               "--window", 8, "--lookahead", 2, "--step", 3)
    assert r.exit_code == 0, r.output
    assert "windows W=8 L=2 S=3" in r.stderr.splitlines()[0]
    res = load_results(tmp_path / "out" / "results.npz")
    runner = load_runner(toy_onnx, "ort-cpu")
    for name, x in (("a", a), ("b", b)):
        stream = StreamScorer(runner, window=8, lookahead=2, step=3)
        got = [stream.push(x[:, s:s + 5].transpose(1, 0, 2)) for s in range(0, x.shape[1], 5)]
        got = np.concatenate([*got, stream.flush()])
        assert (got["snippet"] == np.arange(x.shape[1])).all()
        for k in ("score", "dfm", "anomaly"):
            np.testing.assert_allclose(res[name][k], got[k], rtol=1e-6, atol=1e-6)
    # A window is not the whole video: the toy model's outputs depend on what each call sees.
    whole = toy_reference(a)["anomaly"]
    assert np.abs(res["a"]["anomaly"] - whole).max() > 1e-3


def test_a_video_over_the_budget_is_not_windowed_silently_the_error_says_which_window_fits(toy_onnx):
    from bnwvad.runtime import ArraySource, MemoryBudgetError, Scorer, load_runner
    from bnwvad.runtime.cli import _video_failed

    runner = load_runner(toy_onnx, "ort-cpu")
    scorer = Scorer(runner, call_budget=2 << 20, crops=None)       # 2 MiB a call
    (r,) = list(scorer.iter_results([ArraySource("long", feats(2000))]))
    assert isinstance(r.error, MemoryBudgetError)

    class Run:
        failures: dict = {}
    _video_failed(Run, r, scorer)
    msg = Run.failures["long"]
    m = re.search(r"--window (\d+) \(the largest that fits this budget is (\d+)\)", msg)
    assert m and 1 <= int(m[1]) <= int(m[2]) < 2000, msg
