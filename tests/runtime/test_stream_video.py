"""bnwvad-stream on video: a file, and a live stream URL (a local TCP server sending an MPEG-TS
stream written by PyAV), extracted by a tiny I3D-contract graph (onnx.helper, milliseconds;
test_video.build_toy_extractor) and scored by a toy 5-crop detector reading its 8-d features.

The stream's results must be `score_windowed` (same W / L / S) over the features extracted from
the same video offline (bnwvad.runtime.extractor), within the fp32 ONNX tolerance; and for a
file, bnwvad-infer VIDEO --extractor --window gives the same anomaly scores.
"""
from __future__ import annotations

import importlib.util
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("av")
pytest.importorskip("onnx")

from _toy_onnx import build_toy_onnx, toy_metadata  # noqa: E402
from bnwvad.runtime import load_runner  # noqa: E402
from bnwvad.runtime.contract import OUTPUTS, check, tolerance_for  # noqa: E402
from bnwvad.runtime.extractor import ExtractorRunner, iter_video_features  # noqa: E402
from bnwvad.runtime.stream import score_windowed  # noqa: E402
from bnwvad.runtime.stream_cli import main as stream_main  # noqa: E402
from bnwvad.runtime.video import VideoDecodeError  # noqa: E402

D, CROPS = 8, 5
TIMEOUT = 90


def _sibling(name: str):
    """A sibling test module's helpers (pytest imports test files by path, not as a package)."""
    spec = importlib.util.spec_from_file_location(f"_stream_video_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_video_tests, _stream_tests = _sibling("test_video"), _sibling("test_stream_cli")
build_toy_extractor, numbered_frames, write_video = (_video_tests.build_toy_extractor, _video_tests.numbered_frames,
                                                     _video_tests.write_video)
parse, stream_cmd = _stream_tests.parse, _stream_tests.stream_cmd


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    """(extractor graph, 5-crop detector reading its 8-d features)."""
    d = tmp_path_factory.mktemp("models")
    ex = build_toy_extractor(d / "toy_i3d.onnx", dim=D)
    det = build_toy_onnx(d / "det5.onnx", feature_dim=D,
                         metadata=toy_metadata(feature_dim=D, crops=CROPS, weights_digest="sha256:det5"))
    return ex, det


@pytest.fixture(scope="module")
def ts_video(tmp_path_factory) -> Path:
    """An MPEG-TS stream (H.264, 25 fps, 160 frames = 10 snippets of 64x80): what a camera sends."""
    path = tmp_path_factory.mktemp("ts") / "cam.ts"                # .ts: FFmpeg's MPEG-TS muxer
    return write_video(path, numbered_frames(160, seed=3), codec="libx264", pix_fmt="yuv420p", fps=25)


def reference(models, video: Path, w: int, l: int = 0, s: int = 1, *, snippets: int | None = None):
    """(score_windowed over the video's features extracted offline, the snippets extracted): all
    of them, the first `snippets`, or those before a break."""
    ex, det = models
    feats = []
    with ExtractorRunner(ex, "ort-cpu", threads=1) as runner:
        try:
            for f in iter_video_features(video, runner, crops=CROPS):
                feats.append(f)
        except VideoDecodeError:
            pass
    feats = feats[:snippets] if snippets is not None else feats
    x = np.ascontiguousarray(np.stack(feats).transpose(1, 0, 2))          # (C, T, D)
    with load_runner(det, "ort-cpu", threads=1) as r:
        return score_windowed(r, x, w, l, s), len(feats)


def assert_close(snips: list[dict], ref: dict, count: int | None = None) -> None:
    """The stream's snippet lines against the reference: same snippets, each output within the
    fp32 ONNX Runtime tolerance (extractor calls batch clips differently)."""
    n = len(ref["anomaly"]) if count is None else count
    assert [r["snippet"] for r in snips] == list(range(n))
    for k in OUTPUTS:
        err, ok = check(tolerance_for("fp32"), [r[k] for r in snips], ref[k][:n])
        assert ok, (k, err)


def video_run(source, models, *args, **kw) -> subprocess.CompletedProcess:
    ex, det = models
    return subprocess.run(stream_cmd(source, "--extractor", ex, "--model", det, "--threads", 1, *args),
                          capture_output=True, text=True, timeout=TIMEOUT, **kw)


class Camera:
    """A TCP server on 127.0.0.1 that sends one client a byte stream: the first `cut` bytes at
    once, the rest when `go` is set (never, for a camera that stalls), then closes."""

    def __init__(self, data: bytes, cut: int):
        self.data, self.cut = data, cut
        self.go = threading.Event()
        self.done = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(TIMEOUT)
        self.url = f"tcp://127.0.0.1:{self.server.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        with conn:
            try:
                conn.sendall(self.data[:self.cut])
                if self.go.wait(TIMEOUT) and not self.done.is_set():
                    conn.sendall(self.data[self.cut:])
            except OSError:               # the client hung up first
                pass

    def close(self) -> None:
        self.done.set()
        self.go.set()
        self.thread.join(10)
        self.server.close()


def popen(source, models, *args) -> subprocess.Popen:
    ex, det = models
    return subprocess.Popen(stream_cmd(source, "--extractor", ex, "--model", det, "--threads", 1, *args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def live_run(models, cam: Camera, *args, after_first) -> tuple[int, str, str]:
    """bnwvad-stream on the camera's URL: once the first snippet result is on stdout,
    after_first(proc) runs; then (exit status, all stdout, stderr)."""
    proc = popen(cam.url, models, *args)
    try:
        first = read_until_snippet(proc)
        after_first(proc)
        rest, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
        cam.close()
    return proc.returncode, "".join(first) + rest, err


def read_until_snippet(proc: subprocess.Popen) -> list[str]:
    """stdout lines up to and including the first snippet result (a reader thread bounds the wait)."""
    got: list[str] = []
    seen = threading.Event()

    def pump():
        for line in proc.stdout:
            got.append(line)
            if '"snippet"' in line and '"event"' not in line:
                seen.set()
                return

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    assert seen.wait(TIMEOUT), "no snippet result arrived"
    t.join(5)
    return got


# -- a file ---------------------------------------------------------------------------------------
def test_video_file_streams_the_windowed_scores_of_its_features(models, tmp_path):
    video = write_video(tmp_path / "cam1.mkv", numbered_frames(100), fps=25)      # 6 snippets, FFV1
    proc = video_run(video, models, "-w", 4, "-l", 1, "-s", 2, "--threshold", 0.1)
    assert proc.returncode == 0, proc.stderr
    header, snips, events = parse(proc.stdout)
    ref, t = reference(models, video, 4, 1, 2)
    assert t == 6
    assert_close(snips, ref)
    # Each result made final by an arriving snippet says what its extraction and pipeline took.
    timed = [r for r in snips if "extract_ms" in r]
    assert timed and all(0 < r["extract_ms"] <= r["pipeline_ms"] for r in timed)
    # The header records the extractor and the video; event times use the video's 25 fps.
    ex = ExtractorRunner(models[0], "ort-cpu")
    assert header["extractor"]["path"] == str(models[0]) and header["extractor"]["crops"] == CROPS
    assert header["extractor"]["weights_digest"] == ex.meta.weights_digest == "sha256:toy"
    assert header["extractor"]["precision"] == "fp32"
    ex.close()
    v = header["video"]
    assert (v["source"], v["url"], v["fps"], v["codec"], v["width"], v["height"]) == (str(video), False, 25.0,
                                                                                    "ffv1", 80, 64)
    assert header["fps"] == 25.0 and header["crops"] == CROPS
    assert events and events[-1]["event"] == "end"
    err = proc.stderr
    assert f"source video {video} (80x64 ffv1, 25 fps) through extractor {models[0]}" in err
    assert "end of input: 6 snippet(s) from 100 decoded frame(s) scored" in err

    # bnwvad-infer VIDEO --extractor with the same windows gives the same anomaly scores.
    from bnwvad.runtime.cli import main as infer_main

    out = tmp_path / "infer"
    r = CliRunner().invoke(infer_main, [str(video), "--extractor", str(models[0]), "--model", str(models[1]),
                                        "--out", str(out), "--window", "4", "--lookahead", "1", "--step", "2",
                                        "--threads", "1", "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    err_, ok = check(tolerance_for("fp32"), [s_["anomaly"] for s_ in snips], np.load(out / "cam1.npy"))
    assert ok, err_


def test_resampled_video_and_file_url(models, tmp_path):
    """--video-fps resamples before cutting snippets; a file: URL is opened by FFmpeg as a stream."""
    video = write_video(tmp_path / "v.mkv", numbered_frames(64, seed=4), fps=25)
    proc = video_run(f"file:{video}", models, "-w", 3, "--video-fps", 12.5)
    assert proc.returncode == 0, proc.stderr
    header, snips, _ = parse(proc.stdout)
    assert len(snips) == 2 and header["video"]["url"] is True and header["video"]["resampled_fps"] == 12.5
    assert header["fps"] == 12.5 and header["extractor"]["video_fps"] == 12.5
    ex, det = models
    with ExtractorRunner(ex, "ort-cpu", threads=1) as runner:
        feats = np.stack(list(iter_video_features(video, runner, crops=CROPS, fps=12.5)))
    with load_runner(det, "ort-cpu", threads=1) as r:
        ref = score_windowed(r, np.ascontiguousarray(feats.transpose(1, 0, 2)), 3)
    assert_close(snips, ref)


# -- a live stream URL ----------------------------------------------------------------------------
def test_live_url_results_come_while_the_stream_is_still_sending(models, ts_video):
    """Half the stream is sent; the first result must arrive before the rest is (extraction and
    scoring as frames arrive, on a stream of unknown length); then the whole matches offline."""
    data = ts_video.read_bytes()
    cam = Camera(data, len(data) // 2)

    def send_the_rest(proc):
        assert not cam.go.is_set()
        cam.go.set()

    code, out, err = live_run(models, cam, "-w", 4, "-l", 1, after_first=send_the_rest)
    assert code == 0, err
    header, snips, _ = parse(out)
    assert header["video"]["url"] is True and header["video"]["source"] == cam.url
    assert header["video"]["declared_frames"] is None          # live: no known length
    ref, t = reference(models, ts_video, 4, 1)
    assert t == 10
    assert_close(snips, ref)
    assert "end of input: 10 snippet(s) from 160 decoded frame(s) scored" in err


def test_stalled_camera_ends_on_idle_timeout(models, ts_video):
    """No frame for --idle-timeout: the stream ends (exit 0) with what arrived flushed; the
    network read is freed by PyAV's timeout (no thread left blocked)."""
    data = ts_video.read_bytes()
    cam = Camera(data, len(data) // 2)                        # never sends the rest
    t0 = time.monotonic()
    try:
        proc = video_run(cam.url, models, "-w", 4, "-l", 1, "--idle-timeout", 1.5)
    finally:
        cam.close()
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 40
    err = proc.stderr
    assert "no frame arrived for 1.5 s (--idle-timeout)" in err and "still blocked" not in err
    n = int(err.split("idle timeout: ")[1].split(" snippet(s)")[0])
    assert 1 <= n < 10
    _, snips, _ = parse(proc.stdout)
    ref, _ = reference(models, ts_video, 4, 1, snippets=n)    # flushed: as if the video ended there
    assert_close(snips, ref)


def test_interrupt_on_a_live_url_writes_the_final_results(models, ts_video):
    data = ts_video.read_bytes()
    cam = Camera(data, len(data) // 2)

    def interrupt(proc):
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)

    code, out, err = live_run(models, cam, "-w", 4, "-l", 1, after_first=interrupt)
    assert code == 130, err
    assert "interrupted (SIGINT)" in err
    _, snips, _ = parse(out)
    ref, _ = reference(models, ts_video, 4, 1)
    assert_close(snips, ref, count=len(snips))               # final results only, as in the whole run


# -- failures ---------------------------------------------------------------------------------------
def test_truncated_video_keeps_the_results_before_the_break(models, tmp_path):
    whole = write_video(tmp_path / "whole.mkv", numbered_frames(100), fps=25)
    cut = tmp_path / "cut.mkv"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    proc = video_run(cut, models, "-w", 4, "-l", 1)
    err = proc.stderr
    assert proc.returncode == 1, err
    assert f"FAILED {cut}: the stream broke off after frame" in err and "truncated" in err
    assert "the video stream ended on the failure named above" in err
    _, snips, _ = parse(proc.stdout)
    ref, t = reference(models, cut, 4, 1)
    assert 1 <= t < 6 and len(snips) == t
    assert_close(snips, ref)


def test_video_shorter_than_a_snippet_is_a_named_failure(models, tmp_path):
    short = write_video(tmp_path / "short.mkv", numbered_frames(10), fps=25)
    proc = video_run(short, models, "-w", 4)
    assert proc.returncode == 1, proc.stderr
    assert f"FAILED {short}: 10 frames; expected at least 16 frames (one snippet)" in proc.stderr
    header, snips, _ = parse(proc.stdout)
    assert snips == [] and header["video"]["source"] == str(short)


def test_video_that_cannot_be_opened_exits_2(models, tmp_path):
    bad = tmp_path / "notavideo.mp4"
    bad.write_bytes(b"\x00" * 1000)
    proc = video_run(bad, models, "-w", 4)
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"{bad}: cannot be read as a video (1000 bytes" in proc.stderr
    # A camera that accepts the connection but never sends: the open gives up after --idle-timeout.
    cam = Camera(b"", 0)
    try:
        proc = video_run(cam.url, models, "-w", 4, "--idle-timeout", 1)
    finally:
        cam.close()
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"{cam.url}: cannot be opened within the 1 s open timeout" in proc.stderr


def test_extractor_usage_errors(models, tmp_path):
    ex, det = models
    video = tmp_path / "cam.mp4"
    video.write_bytes(b"")

    def run(*args):
        return CliRunner().invoke(stream_main, [str(a) for a in args] + ["--model", str(det), "-w", "4"])

    r = run(video)
    assert r.exit_code == 2 and f"SOURCE {video} is a video file" in r.output and "--extractor i3d.onnx" in r.output
    r = run("rtsp://camera.invalid/stream")
    assert r.exit_code == 2 and "is a stream URL" in r.output and "--extractor" in r.output
    r = run("-", "--extractor", ex)
    assert r.exit_code == 2 and "--extractor given, but SOURCE - is a features source" in r.output
    r = run(tmp_path, "--video-fps", 10)
    assert r.exit_code == 2 and "--video-fps given" in r.output
    r = run(video, "--extractor", ex, "--video-option", "novalue")
    assert r.exit_code == 2 and "expected KEY=VALUE" in r.output
    r = run(tmp_path / "missing.mkv", "--extractor", ex)
    assert r.exit_code == 2 and "missing.mkv does not exist" in r.output
