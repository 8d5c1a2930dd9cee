"""bnwvad-extract (bnwvad.runtime.extract_cli) and bnwvad-infer VIDEO --extractor, on real video
files written by PyAV (H.264 .mp4, FFV1 .mkv, odd sizes, a grayscale source) and the narrow I3D
(every width divided by 16, 64-d features) exported to ONNX once for the module (~15 s).

Clips cost ~0.1-0.3 s each on the tiny network on 2 shared cores, so most tests extract one crop.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

av = pytest.importorskip("av")

from _helpers import run_without_torch  # noqa: E402
from _toy_onnx import build_toy_onnx, toy_metadata  # noqa: E402
from bnwvad.runtime.extract_cli import main as extract_main  # noqa: E402
from bnwvad.runtime.cli import main as infer_main  # noqa: E402

D = 64


def write_video(path: Path, n: int, h: int, w: int, *, codec: str = "ffv1", gray: bool = False, seed: int = 0,
                fps: int = 30) -> Path:
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=Fraction(fps))
        s.width, s.height = w, h
        s.pix_fmt = "gray" if gray else ("yuv420p" if codec == "libx264" else "bgr0")
        for _ in range(n):
            if gray:
                fr = av.VideoFrame.from_ndarray(rng.integers(0, 256, (h, w), dtype=np.uint8), format="gray")
            else:
                fr = av.VideoFrame.from_ndarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), format="rgb24")
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def i3d_onnx(tmp_path_factory) -> Path:
    """The narrow I3D's deterministic weights exported (fp32, verified on one clip) once."""
    torch = pytest.importorskip("torch")
    from bnwvad.export.i3d import default_clip_cases, export_i3d
    from bnwvad.i3d import I3DConfig, deterministic_state_dict

    tiny = I3DConfig(width_divisor=16)
    d = tmp_path_factory.mktemp("i3d")
    torch.save(deterministic_state_dict(tiny), d / "tiny_i3d.pt")
    export_i3d(d / "tiny_i3d.pt", d / "i3d.onnx", config=tiny, crops_batch=4,
               cases={"random": default_clip_cases()["random"][:1]}, log=lambda *_: None)
    return d / "i3d.onnx"


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A toy BN-WVAD graph reading 64-d features: (1-crop model, 5-crop model)."""
    d = tmp_path_factory.mktemp("det")
    one = build_toy_onnx(d / "det1.onnx", feature_dim=D,
                         metadata=toy_metadata(feature_dim=D, crops=1, weights_digest="sha256:det1"))
    five = build_toy_onnx(d / "det5.onnx", feature_dim=D,
                          metadata=toy_metadata(feature_dim=D, crops=5, weights_digest="sha256:det5"))
    return one, five


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """H.264 48 frames 48x64; FFV1 40 frames of odd size 37x51; FFV1 grayscale 33 frames 50x40
    (2 snippets, one frame left over)."""
    d = tmp_path_factory.mktemp("videos")
    return {"a": write_video(d / "a.mp4", 48, 48, 64, codec="libx264"),
            "b": write_video(d / "b.mkv", 40, 37, 51, seed=1),
            "g": write_video(d / "g.mkv", 33, 50, 40, gray=True, seed=2)}


def extract(*args):
    return CliRunner().invoke(extract_main, [str(a) for a in args], catch_exceptions=False)


def infer(*args):
    return CliRunner().invoke(infer_main, [str(a) for a in args], catch_exceptions=False)


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, i3d_onnx, videos):
    """The three videos extracted once with 1 crop (a folder argument)."""
    out = tmp_path_factory.mktemp("run") / "feats"
    r = extract(videos["a"].parent, "--extractor", i3d_onnx, "--crops", "1", "--out", out, "--threads", "2")
    assert r.exit_code == 0, r.output
    return out


# -- the layout, the record ------------------------------------------------------------------------
def test_extract_writes_the_datasets_layout_and_records_the_extractor(extracted, i3d_onnx, videos):
    from bnwvad.runtime.extractor import ExtractorRunner, extract_video

    out = extracted
    assert sorted(p.name for p in out.iterdir()) == ["a__0.npy", "b__0.npy", "g__0.npy", "summary.json"]
    for name, t in (("a", 3), ("b", 2), ("g", 2)):
        arr = np.load(out / f"{name}__0.npy", allow_pickle=False)
        assert arr.dtype == np.float32 and arr.shape == (t, D) and np.isfinite(arr).all()
    with ExtractorRunner(i3d_onnx, "ort-cpu", threads=2) as ex:
        want = extract_video(videos["b"], ex, crops=1)
        digest = ex.meta.weights_digest
    np.testing.assert_array_equal(np.load(out / "b__0.npy"), want[:, 0])
    s = summary(out)
    assert s["format"] == "bnwvad-extract-run" and s["status"] == "complete" and s["interrupted"] is False
    assert s["extractor"]["weights_digest"] == digest and s["extractor"]["precision"] == "fp32"
    assert s["settings"] == {"crops": 1, "crop_names": ["centre"], "fps": None, "layout": "per-crop",
                             "feature_dim": D}
    assert sorted(s["files"]) == sorted(p.name for p in out.iterdir())
    g = s["videos"]["g"]
    assert g["snippets"] == 2 and g["frames"] == 32 and g["partial"] is False and g["error"] is None
    assert g["video_fps"] == 30.0 and g["realtime_factor"] > 0 and g["files"] == ["g__0.npy"]
    assert s["failures"] == {}


def test_stacked_five_crops_from_a_list_file(tmp_path, i3d_onnx, videos, extracted):
    lst = tmp_path / "videos.txt"
    lst.write_text(f"# one path per line\n{videos['g']}\n\n")
    out = tmp_path / "stacked"
    r = extract(lst, "--extractor", i3d_onnx, "--crops", "5", "--stacked", "--out", out, "-q")
    assert r.exit_code == 0, r.output
    arr = np.load(out / "g.npy", allow_pickle=False)
    assert arr.shape == (2, 5, D)
    # The 5-crop set's last crop is the centre crop: the 1-crop features.
    np.testing.assert_allclose(arr[:, 4], np.load(extracted / "g__0.npy"), rtol=0, atol=1e-6)
    assert summary(out)["settings"]["layout"] == "stacked"


# -- resuming, and whose folder it is ------------------------------------------------------------
def test_a_rerun_skips_complete_videos_and_extracts_new_or_changed_ones(tmp_path, i3d_onnx, videos):
    src = tmp_path / "src"
    src.mkdir()
    (src / "b.mkv").write_bytes(videos["b"].read_bytes())
    out = tmp_path / "out"
    assert extract(src, "--extractor", i3d_onnx, "--crops", "1", "--out", out, "-q").exit_code == 0
    first = (out / "b__0.npy").stat().st_mtime_ns
    (src / "g.mkv").write_bytes(videos["g"].read_bytes())
    r = extract(src, "--extractor", i3d_onnx, "--crops", "1", "--out", out)
    assert r.exit_code == 0, r.output
    assert "1 video(s) to extract, 1 already done" in r.output
    assert (out / "b__0.npy").stat().st_mtime_ns == first          # not rewritten
    s = summary(out)
    assert s["skipped"] == ["b"] and set(s["videos"]) == {"b", "g"}
    assert sorted(s["files"]) == ["b__0.npy", "g__0.npy", "summary.json"]
    # A changed source is extracted again.
    (src / "b.mkv").write_bytes(videos["g"].read_bytes())
    r = extract(src, "--extractor", i3d_onnx, "--crops", "1", "--out", out)
    assert r.exit_code == 0 and "1 video(s) to extract, 1 already done" in r.output
    np.testing.assert_array_equal(np.load(out / "b__0.npy"), np.load(out / "g__0.npy"))


def test_other_settings_another_run_or_unknown_files_are_refused_unless_overwrite(tmp_path, i3d_onnx, videos,
                                                                                   extracted, detector):
    out = tmp_path / "out"
    out.mkdir()
    for f in extracted.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    r = extract(videos["g"], "--extractor", i3d_onnx, "--crops", "5", "--out", out)
    assert r.exit_code == 2 and "other settings (crops 1, now 5)" in r.output and "--overwrite" in r.output
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in extracted.iterdir())
    # A bnwvad-infer run folder is not a feature folder.
    scored = tmp_path / "scored"
    assert infer(extracted, "--model", detector[0], "--out", scored, "-q").exit_code == 0
    r = extract(videos["g"], "--extractor", i3d_onnx, "--crops", "1", "--out", scored)
    assert r.exit_code == 2 and "holds a bnwvad-infer run" in r.output
    # And a feature folder is not a score folder.
    r = infer(extracted, "--model", detector[0], "--out", out)
    assert r.exit_code == 2 and "not a bnwvad-infer run record" in r.output
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("x")
    r = extract(videos["g"], "--extractor", i3d_onnx, "--crops", "1", "--out", stray)
    assert r.exit_code == 2 and "holds no summary.json" in r.output
    # --overwrite removes exactly the listed files of the earlier run.
    r = extract(videos["g"], "--extractor", i3d_onnx, "--crops", "5", "--stacked", "--out", out, "--overwrite", "-q")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["g.npy", "summary.json"]


# -- bad videos --------------------------------------------------------------------------------
def test_corrupt_short_and_truncated_videos_are_named_and_partial_features_kept(tmp_path, i3d_onnx):
    src = tmp_path / "src"
    src.mkdir()
    (src / "corrupt.mp4").write_bytes(os.urandom(4000))
    write_video(src / "short.mkv", 10, 40, 40)
    full = write_video(tmp_path / "long.mkv", 64, 40, 48, seed=3)
    data = full.read_bytes()
    (src / "cut.mkv").write_bytes(data[: len(data) // 2])
    (src / "empty.avi").write_bytes(b"")
    out = tmp_path / "out"
    r = extract(src, "--extractor", i3d_onnx, "--crops", "1", "--out", out, "-q")
    assert r.exit_code == 1, r.output
    s = summary(out)
    fails = s["failures"]
    assert set(fails) == {"corrupt", "short", "cut", "empty"}
    assert "corrupt.mp4" in fails["corrupt"] and "cannot be read as a video" in fails["corrupt"]
    assert "short.mkv: 10 frames; expected at least 16" in fails["short"]
    assert "cut.mkv" in fails["cut"] and "truncated" in fails["cut"]
    for name in ("corrupt", "short", "cut", "empty"):
        assert f"FAILED {src / name}" in r.output or name in r.output
    # The truncated video's snippets before the break are kept, marked partial.
    cut = s["videos"]["cut"]
    assert cut["partial"] is True and "truncated" in cut["error"] and cut["snippets"] >= 1
    assert np.load(out / "cut__0.npy").shape == (cut["snippets"], D)
    assert sorted(p.name for p in out.iterdir()) == ["cut__0.npy", "summary.json"] == sorted(s["files"])
    # A rerun tries the partial video again (it is not complete).
    r = extract(src / "cut.mkv", "--extractor", i3d_onnx, "--crops", "1", "--out", out, "-q")
    assert r.exit_code == 1 and summary(out)["skipped"] == []


def test_an_interrupt_writes_what_is_finished_and_exits_130(tmp_path, i3d_onnx, videos, monkeypatch):
    from bnwvad.runtime import extract_cli
    from bnwvad.runtime.io import Interrupted

    real = extract_cli.extract_one
    calls = []

    def once_then_interrupt(*a, **kw):
        calls.append(a[0])
        if len(calls) > 1:
            raise Interrupted("SIGINT")
        return real(*a, **kw)

    monkeypatch.setattr(extract_cli, "extract_one", once_then_interrupt)
    out = tmp_path / "out"
    r = extract(videos["b"], videos["g"], "--extractor", i3d_onnx, "--crops", "1", "--out", out, "-q")
    assert r.exit_code == 130, r.output
    assert "interrupted (SIGINT) after 1 of 2 video(s)" in r.output
    s = summary(out)
    assert s["status"] == "interrupted" and s["interrupted"] is True and s["signal"] == "SIGINT"
    assert list(s["videos"]) == ["b"] and s["not_processed"] == ["g"]
    assert sorted(p.name for p in out.iterdir()) == ["b__0.npy", "summary.json"]
    # The next run resumes: only g is extracted.
    monkeypatch.setattr(extract_cli, "extract_one", real)
    r = extract(videos["b"], videos["g"], "--extractor", i3d_onnx, "--crops", "1", "--out", out)
    assert r.exit_code == 0 and "1 video(s) to extract, 1 already done" in r.output


def test_help_gives_the_layout_and_every_exit_status():
    r = CliRunner().invoke(extract_main, ["--help"], terminal_width=100)
    assert r.exit_code == 0
    for code in ("0 ", "1 ", "2 ", "130 "):
        assert f"  {code}" in r.output
    assert "<video>__<k>.npy" in r.output and "--stacked" in r.output and ".webm" in r.output


def test_no_extractor_file_exits_2_without_an_out_folder(tmp_path, videos):
    r = extract(videos["g"], "--extractor", tmp_path / "missing.onnx", "--out", tmp_path / "out")
    assert r.exit_code == 2 and "missing.onnx" in r.output
    assert not (tmp_path / "out").exists()


# -- bnwvad-infer VIDEO --extractor ------------------------------------------------------------
def test_infer_on_videos_equals_extract_then_infer(tmp_path, i3d_onnx, detector, videos, extracted):
    direct = tmp_path / "direct"
    r = infer(videos["a"], videos["b"], videos["g"], "--extractor", i3d_onnx, "--model", detector[0],
              "--out", direct, "--threshold", "0.01")
    assert r.exit_code == 0, r.output
    two_step = tmp_path / "two"
    assert infer(extracted, "--model", detector[0], "--out", two_step, "-q").exit_code == 0
    for name in "abg":
        np.testing.assert_allclose(np.load(direct / f"{name}.npy"), np.load(two_step / f"{name}.npy"),
                                   rtol=0, atol=1e-6)
    s = summary(direct)
    assert s["model"]["weights_digest"] == "sha256:det1"
    assert s["extractor"]["weights_digest"] == summary(extracted)["extractor"]["weights_digest"]
    assert s["extractor"]["crops"] == 1
    assert s["videos"]["a"]["video"]["source"] == str(videos["a"]) and s["videos"]["a"]["snippets"] == 3
    assert json.loads((direct / "events.json").read_text())["video_fps"] == {"a": 30.0, "b": 30.0, "g": 30.0}


def test_infer_uses_the_models_crop_count_and_names_bad_videos(tmp_path, i3d_onnx, detector, videos):
    src = tmp_path / "src"
    src.mkdir()
    (src / "g.mkv").write_bytes(videos["g"].read_bytes())
    (src / "broken.webm").write_bytes(b"\x1a\x45\xdf\xa3" + os.urandom(500))
    out = tmp_path / "out"
    r = infer(src, "--extractor", i3d_onnx, "--model", detector[1], "--out", out, "-q")
    assert r.exit_code == 1, r.output
    s = summary(out)
    assert s["extractor"]["crops"] == 5 and s["videos"]["g"]["crops"] == 5
    assert list(s["failures"]) == ["broken"] and "broken.webm" in s["failures"]["broken"]
    assert sorted(s["files"]) == ["g.npy", "results.npz", "summary.json"]


def test_infer_refuses_an_extractor_of_another_feature_dim(tmp_path, i3d_onnx, videos):
    det8 = build_toy_onnx(tmp_path / "det8.onnx", metadata=toy_metadata(crops=1))
    r = infer(videos["g"], "--extractor", i3d_onnx, "--model", det8, "--out", tmp_path / "out")
    assert r.exit_code == 2 and "makes 64-d features but the model" in r.output
    assert not (tmp_path / "out").exists()


# -- no torch ------------------------------------------------------------------------------------
def test_extract_and_infer_on_videos_never_import_torch(tmp_path, i3d_onnx, detector, videos):
    out = tmp_path / "feats"
    proc = run_without_torch("bnwvad.runtime.extract_cli", videos["g"], "--extractor", i3d_onnx, "--crops", "1",
                             "--out", out, "-q", text=True, timeout=300)
    assert "NO-TORCH-OK 0" in proc.stderr, proc.stdout + proc.stderr
    assert (out / "g__0.npy").is_file()
    proc = run_without_torch("bnwvad.runtime.cli", videos["g"], "--extractor", i3d_onnx, "--model", detector[0],
                             "--out", tmp_path / "scores", "-q", text=True, timeout=300)
    assert "NO-TORCH-OK 0" in proc.stderr, proc.stdout + proc.stderr
    assert np.load(tmp_path / "scores" / "g.npy").shape == (2,)


def test_sigint_mid_run_exits_130_with_the_finished_videos_recorded(tmp_path, i3d_onnx, videos):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"v{i}.mkv").write_bytes(videos["g"].read_bytes())
    out = tmp_path / "out"
    exe = Path(sys.executable).with_name("bnwvad-extract")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "bnwvad.runtime.extract_cli"]
    proc = subprocess.Popen([*cmd, str(src), "--extractor", str(i3d_onnx), "--crops", "1", "--out", str(out), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import time

    deadline = time.monotonic() + 120
    while not list(out.glob("v*__0.npy")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(__import__("signal").SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted (SIGINT)" in err and "Traceback" not in err
    s = summary(out)
    assert s["status"] == "interrupted" and 1 <= len(s["videos"]) < 8
    assert len(s["videos"]) + len(s["not_processed"]) == 8
    on_disk = sorted(p.name for p in out.iterdir())
    assert on_disk == sorted(s["files"])
