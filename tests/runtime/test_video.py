"""The I3D frame protocol in numpy (bnwvad.runtime.video), PyAV decoding, and the torch-free
extractor runner and pipeline (bnwvad.runtime.extractor) on a toy extractor graph.

Videos are written by the tests with PyAV (FFV1 in .mkv, H.264 in .mp4), a few dozen tiny
frames each; the extractor graph is built with onnx.helper (milliseconds). The protocol's
conformance with the reference network is in tests/bnwvad/test_i3d.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from _helpers import NO_TORCH
from bnwvad.runtime.errors import InputError, ModelLoadError, RuntimeFailure
from bnwvad.runtime.video import (NearestResampler, VideoDecodeError, VideoDependencyError, VideoError,
                                  VideoOpenError, VideoReader, VideoTooShortError, as_rgb, crop_boxes,
                                  crop_names, iter_frame_snippets, resample_indices, resize_frames,
                                  resize_taps, resize_weights, resized_size, snippet_clips, snippet_count)

TOY_DIM = 8


# -- helpers -----------------------------------------------------------------------------------
def write_video(path: Path, frames: np.ndarray, *, codec: str = "ffv1", pix_fmt: str = "bgr0", fps: int = 25,
                pts: list[int] | None = None, fmt: str = "rgb24") -> Path:
    """Write uint8 frames (F, H, W, 3) (or (F, H, W) with fmt="gray") with PyAV. pts: per-frame
    timestamps in milliseconds (variable frame rate)."""
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height = frames.shape[2], frames.shape[1]
        s.pix_fmt = pix_fmt
        if pts is not None:
            s.time_base = Fraction(1, 1000)
        for i, f in enumerate(frames):
            fr = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format=fmt)
            if pts is not None:
                fr.pts, fr.time_base = pts[i], Fraction(1, 1000)
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def numbered_frames(n: int, h: int = 64, w: int = 80, seed: int = 0) -> np.ndarray:
    """Random frames whose pixel (0, 0, 0) is the frame's index (to follow frames through)."""
    x = np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(n) % 256
    return x


def build_toy_extractor(path: Path, *, dim: int = TOY_DIM, seed: int = 0, metadata: dict | None = None,
                        crops_batch: int = 4) -> Path:
    """A tiny graph that follows the extractor contract: clips (N, 3, 16, 224, 224) -> features
    (N, dim): the time mean, 28x28 average pooling, a fixed projection. Depends on where a crop
    is and on its colours, so crop or order mistakes show."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).normal(size=(3 * 8 * 8, dim)).astype(np.float32)
    nodes = [helper.make_node("ReduceMean", ["clips", "ax2"], ["tm"], keepdims=0),         # (N, 3, 224, 224)
             helper.make_node("AveragePool", ["tm"], ["p"], kernel_shape=[28, 28], strides=[28, 28]),
             helper.make_node("Reshape", ["p", "shape"], ["flat"]),                       # (N, 192)
             helper.make_node("MatMul", ["flat", "w"], ["features"])]
    graph = helper.make_graph(
        nodes, "toy_i3d", [helper.make_tensor_value_info("clips", TensorProto.FLOAT, ["N", 3, 16, 224, 224])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", dim])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([2], np.int64), "ax2"),
         numpy_helper.from_array(np.array([0, -1], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = {"format": "bnwvad-i3d-onnx", "format_version": 1, "bnwvad_version": "0", "precision": "fp32",
            "opset": 18, "exporter": "onnx.helper (test)", "frames_per_snippet": 16, "input_size": 224,
            "channels": 3, "input_range": [-1, 1], "feature_dim": dim, "crops_batch": crops_batch,
            "network": {"name": "toy"}, "protocol": {}, "source": None, "source_digest": None,
            "weights_digest": "sha256:toy", "inputs": [], "outputs": []}
    meta.update(metadata or {})
    for k, v in meta.items():
        if v is not None or k in ("source", "source_digest"):
            e = model.metadata_props.add()
            e.key, e.value = k, json.dumps(v)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


class NumpyToy:
    """The toy graph's function in numpy: the reference for the ONNX Runtime runs."""

    def __init__(self, dim: int = TOY_DIM, seed: int = 0, batch: int = 4):
        self.w = np.random.default_rng(seed).normal(size=(3 * 8 * 8, dim)).astype(np.float32)
        self.batch, self.feature_dim, self.calls = batch, dim, []

    def run(self, clips, *, check=True):
        self.calls.append(clips.shape[0])
        tm = clips.mean(axis=2, dtype=np.float64)                                   # (N, 3, 224, 224)
        p = tm.reshape(tm.shape[0], 3, 8, 28, 8, 28).mean(axis=(3, 5))
        return (p.reshape(p.shape[0], -1) @ self.w).astype(np.float32)


@pytest.fixture(scope="module")
def toy_extractor(tmp_path_factory) -> Path:
    pytest.importorskip("onnx")
    return build_toy_extractor(tmp_path_factory.mktemp("toy_i3d") / "toy_i3d.onnx")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """The test videos, written once: FFV1 (lossless RGB) 40 frames 64x80, H.264 40 frames 48x48,
    FFV1 grayscale 40 frames of odd size 37x53."""
    pytest.importorskip("av")
    d = tmp_path_factory.mktemp("videos")
    frames = numbered_frames(40)
    gray = np.random.default_rng(1).integers(0, 256, (40, 37, 53), dtype=np.uint8)
    h264 = np.repeat(np.linspace(0, 255, 48, dtype=np.uint8)[None, None, :, None], 40, 0).repeat(48, 1).repeat(3, 3)
    return {"frames": frames, "gray_frames": gray, "h264_frames": h264,
            "mkv": write_video(d / "a.mkv", frames),
            "mp4": write_video(d / "b.mp4", h264, codec="libx264", pix_fmt="yuv420p"),
            "gray": write_video(d / "g.mkv", gray, pix_fmt="gray", fmt="gray")}


# -- resizing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(240, 320), (480, 640), (97, 131), (13, 7), (1, 5), (300, 257), (33, 400)])
def test_resize_matches_torch_interpolate(shape):
    """torch interpolate(bilinear, align_corners=False, antialias=True) on float32, rounded
    half-to-even and clipped: at most one grey level off, in a few pixels."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(sum(shape)).integers(0, 256, (2, *shape, 3), dtype=np.uint8)
    size = resized_size(*shape)
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    ref = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    ref = ref.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    ours = resize_frames(x)
    assert ours.shape == ref.shape == (2, *size, 3) and ours.dtype == np.uint8
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert diff.max() <= 1
    assert (diff > 0).sum() <= max(3, diff.size // 20000), (diff > 0).sum()


def test_resized_size_and_weights():
    assert resized_size(240, 320) == (256, 341)
    assert resized_size(320, 240) == (341, 256)
    assert resized_size(500, 500) == (256, 256)
    assert resized_size(1, 5) == (256, 1280)                  # a tiny shorter side is upsampled
    for n_in, n_out in [(320, 341), (640, 341), (7, 256), (256, 256), (1, 256)]:
        w = resize_weights(n_in, n_out)
        assert w.shape == (n_out, n_in) and w.dtype == np.float32
        np.testing.assert_allclose(w.sum(axis=1), 1, atol=1e-6)
        assert (w >= 0).all()
        lo, taps = resize_taps(n_in, n_out)
        dense = np.zeros((n_out, n_in), np.float32)
        for k in range(taps.shape[1]):
            ok = lo + k < n_in
            dense[np.flatnonzero(ok), (lo + k)[ok]] += taps[ok, k]
        np.testing.assert_array_equal(dense, w)
    np.testing.assert_array_equal(resize_weights(9, 9), np.eye(9, dtype=np.float32))
    # Downscaling by 4: every output averages a window of 8 inputs (antialias), not 2.
    assert (resize_weights(64, 16)[5] > 0).sum() == 8
    x = np.random.default_rng(0).integers(0, 256, (256, 300, 3), dtype=np.uint8)
    assert resize_frames(x) is x or np.array_equal(resize_frames(x), x)      # already the size


def test_grayscale_odd_and_tiny_frames():
    g = np.random.default_rng(0).integers(0, 256, (16, 37, 53), dtype=np.uint8)
    rgb = as_rgb(g)
    assert rgb.shape == (16, 37, 53, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    np.testing.assert_array_equal(as_rgb(g[..., None]), rgb)
    clips = snippet_clips(g, 10)
    assert clips.shape == (10, 3, 16, 224, 224) and clips.dtype == np.float32
    np.testing.assert_array_equal(clips[:, 0], clips[:, 1])
    tiny = np.full((16, 2, 3, 3), 77, np.uint8)                 # 2x3 frames: upsampled to 256x384
    clips = snippet_clips(tiny, 1)
    np.testing.assert_allclose(clips, np.float32(77) / 255 * 2 - 1, rtol=0, atol=1e-6)
    with pytest.raises(VideoError, match="dtype float32"):
        as_rgb(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(VideoError, match="expected"):
        as_rgb(np.zeros((2, 4, 4, 4), np.uint8))


# -- crops -------------------------------------------------------------------------------------
def coordinate_frames(h: int = 256, w: int = 341) -> np.ndarray:
    """16 frames at the resized size (no resampling happens): R = row, G = column % 256,
    B = 16 * (column // 256) + frame."""
    r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    f = np.zeros((16, h, w, 3), np.uint8)
    f[..., 0], f[..., 1] = r, c % 256
    f[..., 2] = (16 * (c // 256))[None] + np.arange(16)[:, None, None]
    return f


def decode_pixel(clips, crop, frame, y, x):
    """(row, column, frame) of the original frame at pixel (y, x) of a crop's frame."""
    v = np.rint((clips[crop, :, frame, y, x] + 1) / 2 * 255).astype(int)
    return int(v[0]), int(v[1] + 256 * (v[2] // 16)), int(v[2] % 16)


def test_crop_geometry_and_order():
    """torchvision's five_crop / ten_crop: TL, TR, BL, BR, centre, then the same five of the
    horizontally flipped frame; centre offsets round((H - 224) / 2), round((W - 224) / 2)."""
    h, w = 256, 341                        # W - 224 = 117 is odd: round(58.5) = 58 (half to even)
    assert crop_boxes(h, w, 10) == [(0, 0, False), (0, 117, False), (32, 0, False), (32, 117, False),
                                    (16, 58, False), (0, 0, True), (0, 117, True), (32, 0, True),
                                    (32, 117, True), (16, 58, True)]
    clips = snippet_clips(coordinate_frames(h, w), 10)
    assert clips.shape == (10, 3, 16, 224, 224)
    # (row, column) of the original frame at each crop's top-left pixel: the flipped crops read
    # the mirrored columns (the flipped centre starts at column 340 - 58 = 282, not 340 - 59).
    expected = [(0, 0), (0, 117), (32, 0), (32, 117), (16, 58),
                (0, 340), (0, 340 - 117), (32, 340), (32, 340 - 117), (16, 340 - 58)]
    for c, (row, col) in enumerate(expected):
        for frame in (0, 15):
            got_row, got_col, got_frame = decode_pixel(clips, c, frame, 0, 0)
            assert (got_row, got_col, got_frame) == (row, col, frame), (c, frame)
    # Along a flipped crop's row the columns go down.
    assert decode_pixel(clips, 5, 3, 0, 1)[1] == 339
    np.testing.assert_array_equal(snippet_clips(coordinate_frames(h, w), 5), clips[:5])
    np.testing.assert_array_equal(snippet_clips(coordinate_frames(h, w), 1), clips[4:5])
    assert crop_names(10)[4] == "centre" and crop_names(10)[9] == "flip_centre" and crop_names(1) == ["centre"]
    with pytest.raises(ValueError, match="expected one of"):
        crop_boxes(h, w, 3)


def test_pixels_scaled_to_minus_one_one():
    f = np.zeros((16, 256, 256, 3), np.uint8)
    f[:, :, :, 0] = 255
    f[:, :, :, 1] = 128
    clips = snippet_clips(f, 1)
    assert clips[0, 0].min() == 1.0 and clips[0, 2].max() == -1.0
    assert clips[0, 1, 0, 0, 0] == np.float32(128) / np.float32(255) * np.float32(2) - np.float32(1)


# -- snippets and frame rates ------------------------------------------------------------------
def test_snippets_drop_the_last_partial_one():
    frames = numbered_frames(40, 8, 8)
    snips = list(iter_frame_snippets(frames))
    assert snippet_count(40) == 2 and len(snips) == 2
    assert [s[0, 0, 0, 0] for s in snips] == [0, 16]
    with pytest.raises(VideoTooShortError, match="15 frames; expected at least 16") as e:
        list(iter_frame_snippets(frames[:15]))
    assert e.value.frames == 15


def test_resample_indices():
    t25 = np.arange(40) / 25
    np.testing.assert_array_equal(resample_indices(t25, 25), np.arange(40))          # native rate: identity
    np.testing.assert_array_equal(resample_indices(t25, 12.5), np.arange(0, 40, 2))
    np.testing.assert_array_equal(resample_indices(t25 + 3.7, 12.5), np.arange(0, 40, 2))
    up = resample_indices(t25, 50)                                                     # ties -> earlier
    np.testing.assert_array_equal(up, np.repeat(np.arange(40), 2)[:79])
    # Variable frame rate: a gap of 0.3 s is filled with the nearest frames.
    t = np.array([0.0, 0.04, 0.08, 0.38, 0.42])
    np.testing.assert_array_equal(resample_indices(t, 10), [0, 2, 2, 3, 3])       # 0.4: a tie -> 0.38
    np.testing.assert_array_equal(resample_indices(t, 25), [0, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3])
    with pytest.raises(VideoError, match="positive frame rate"):
        resample_indices(t, 0)


def test_streaming_resampler_agrees_with_indices():
    rng = np.random.default_rng(3)
    for fps in (7.0, 25.0, 29.97, 60.0):
        t = np.cumsum(rng.uniform(0.005, 0.09, 200))
        t[50] = t[49]                                             # a repeated timestamp
        r = NearestResampler(fps)
        got = [i for k, ti in enumerate(t) for _, i in r.push(ti, k)]
        np.testing.assert_array_equal(got, resample_indices(t, fps))


# -- decoding ----------------------------------------------------------------------------------
def test_reader_ffv1_mkv_lossless_and_resized(videos):
    with VideoReader(videos["mkv"]) as reader:
        assert (reader.info.width, reader.info.height, reader.info.fps, reader.info.codec) == (80, 64, 25.0, "ffv1")
        snips = list(reader)
    assert [s.index for s in snips] == [0, 1] and [s.first_frame for s in snips] == [0, 16]
    np.testing.assert_array_equal(np.concatenate([s.frames for s in snips]), videos["frames"][:32])
    np.testing.assert_allclose(snips[1].times, np.arange(16, 32) / 25)
    with VideoReader(videos["mkv"], short_side=256) as reader:
        resized = [s.frames for s in reader]
    assert resized[0].shape == (16, 256, 320, 3)
    np.testing.assert_array_equal(resized[1], resize_frames(videos["frames"][16:32]))


def test_reader_h264_mp4_and_grayscale(videos):
    with VideoReader(videos["mp4"]) as reader:
        assert reader.info.frames == 40 and reader.info.codec == "h264"
        snips = list(reader)
    assert len(snips) == 2 and snips[0].frames.shape == (16, 48, 48, 3)
    assert np.abs(snips[0].frames.astype(int) - videos["h264_frames"][:16]).mean() < 4     # lossy, close
    with VideoReader(videos["gray"]) as reader:
        snips = list(reader)
    f = snips[0].frames
    assert f.shape == (16, 37, 53, 3) and (f[..., 0] == f[..., 1]).all() and (f[..., 1] == f[..., 2]).all()
    np.testing.assert_array_equal(f[..., 0], videos["gray_frames"][:16])


def test_reader_fps_resampling(videos, tmp_path):
    with VideoReader(videos["mkv"], fps=12.5) as reader:
        snips = list(reader)
    assert len(snips) == 1 and reader.frames_decoded == 40 and reader.frames_used == 20
    assert list(snips[0].frames[:, 0, 0, 0]) == list(range(0, 32, 2))
    with VideoReader(videos["mkv"], fps=25) as reader:                     # the native rate: identity
        np.testing.assert_array_equal(np.concatenate([s.frames for s in reader]), videos["frames"][:32])
    # Variable frame rate: 20 frames with a 0.4 s gap after frame 9, read at 25 fps.
    pts = [40 * i for i in range(10)] + [760 + 40 * i for i in range(10)]
    vfr = write_video(tmp_path / "vfr.mkv", numbered_frames(20), pts=pts)
    with VideoReader(vfr, fps=25) as reader:
        frames = np.concatenate([s.frames for s in reader])
    assert reader.frames_used == 29                         # 0 .. 1.12 s at 25 fps
    t = np.array(pts) / 1000
    np.testing.assert_array_equal(frames[:, 0, 0, 0], resample_indices(t, 25)[:16])
    assert list(frames[8:13, 0, 0, 0]) == [8, 9, 9, 9, 9]   # the gap repeats the nearest frame


def test_reader_memory_is_bounded_by_the_queue(tmp_path):
    """The decode thread waits for the consumer: with one snippet queued it never runs more
    than a few snippets ahead, however long the video."""
    import time

    long = write_video(tmp_path / "long.mkv", numbered_frames(320, 16, 16))
    with VideoReader(long, max_queued=1) as reader:
        it = iter(reader)
        first = next(it)
        time.sleep(0.5)
        ahead = reader.frames_decoded
        rest = list(it)
    assert first.index == 0 and len(rest) == 19
    assert ahead <= 16 * 3 + 1, ahead        # the one in hand, one queued, one being put


def test_reader_stops_early_and_is_single_use(videos):
    reader = VideoReader(videos["mkv"], max_queued=1)
    for snip in reader:
        break
    reader.close()
    assert reader._thread is not None and not reader._thread.is_alive()
    with pytest.raises(VideoError, match="iterated once"):
        list(reader)



# -- live sources: URLs, get(timeout), a bounded close --------------------------------------
def test_is_stream_url():
    from bnwvad.runtime.video import is_stream_url

    for url in ("rtsp://cam/1", "RTSP://cam/1", "rtmp://h/app", "http://h/a.mp4", "https://h/x", "udp://@:1234",
                "tcp://127.0.0.1:9000", "srt://h:9000", "file:a.ts", "file:///tmp/a.ts"):
        assert is_stream_url(url), url
    for path in ("a.mp4", "/tmp/a.mkv", "C:/videos/a.mp4", "c:\\a.mp4", "-", "dir/with:colon.mp4",
                 Path("rtsp://cam/1"), ""):
        assert not is_stream_url(path), path


def test_reader_get_with_timeout_and_file_url(videos):
    """get(timeout) yields what iteration yields, then None with `ended`; a file: URL (opened
    by FFmpeg's protocol, the source kept as given) decodes the same frames."""
    url = f"file:{videos['mkv']}"
    reader = VideoReader(url)
    assert reader.url and reader.path is None and reader.source == url and reader.info.path == url
    got = []
    while not reader.ended:
        snip = reader.get(0.05)
        if snip is not None:
            got.append(snip)
            assert snip.ready_at > 0
    assert reader.get(0.0) is None and reader.close()
    assert [s.index for s in got] == [0, 1]
    np.testing.assert_array_equal(np.concatenate([s.frames for s in got]), videos["frames"][:32])


def test_reader_close_is_bounded_when_the_source_sends_nothing(tmp_path):
    """A live source that stops sending holds the decode thread in a read: close(timeout)
    returns False instead of waiting for it; PyAV's read timeout turns the stall into a named
    VideoDecodeError after the snippets before it."""
    import socket
    import threading
    import time

    # .ts: an MPEG-TS stream, what a camera sends (no declared length)
    data = write_video(tmp_path / "cam.ts", numbered_frames(48, 48, 64), codec="mpeg2video",
                       pix_fmt="yuv420p").read_bytes()
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(30)
    url = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    release = threading.Event()

    def camera():                    # sends the stream, then stays connected and silent
        conn, _ = server.accept()
        with conn:
            conn.sendall(data)
            release.wait(30)

    for timeout, stalls in ((None, True), ((5.0, 0.5), False)):
        release.clear()
        t = threading.Thread(target=camera, daemon=True)
        t.start()
        reader = VideoReader(url, timeout=timeout)
        got, error = [], None
        deadline = time.monotonic() + 20
        # Stalling: until nothing more comes (the last frames stay in the demuxer and decoder
        # until more data or the end, and the thread waits in its read); with a read timeout:
        # until the timeout ends decoding.
        while error is None and time.monotonic() < deadline:
            try:
                snip = reader.get(0.5)
            except VideoDecodeError as e:
                error = e
                break
            if snip is not None:
                got.append(snip)
            elif got and stalls:
                break
        assert len(got) >= 1
        if stalls:                   # no read timeout: the thread waits in the read
            t0 = time.monotonic()
            assert reader.close(timeout=0.3) is False and time.monotonic() - t0 < 2
            release.set()            # the camera hangs up: the read returns, the thread ends
            reader._thread.join(10)
            assert not reader._thread.is_alive()
        else:
            assert error is not None and url in str(error) and "read timeout" in str(error)
            assert error.snippets == len(got)
            assert reader.close(timeout=1.0)
            release.set()
        t.join(10)
    server.close()

# -- bad videos -------------------------------------------------------------------------------
def test_unreadable_files(tmp_path):
    pytest.importorskip("av")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(VideoOpenError, match=r"junk\.mp4: cannot be read as a video \(3000 bytes") as e:
        VideoReader(junk)
    assert isinstance(e.value, RuntimeFailure) and e.value.path == str(junk)
    empty = tmp_path / "empty.mkv"
    empty.write_bytes(b"")
    with pytest.raises(VideoOpenError, match="empty.mkv: cannot be read"):
        VideoReader(empty)
    with pytest.raises(VideoOpenError, match="no such video file"):
        VideoReader(tmp_path / "missing.mp4")


def test_zero_frames_and_no_video_stream(tmp_path):
    av = pytest.importorskip("av")
    header_only = tmp_path / "zero.mkv"
    with av.open(str(header_only), "w") as c:
        s = c.add_stream("ffv1", rate=25)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv444p"
        c.start_encoding()
    with pytest.raises(VideoTooShortError, match=r"zero.mkv: .*\(0 frames\); expected a video of at least 16") as e:
        with VideoReader(header_only) as r:
            list(r)
    assert e.value.frames == 0
    audio = tmp_path / "audio.mkv"
    with av.open(str(audio), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        fr.sample_rate = 8000
        for p in [*s.encode(fr), *s.encode()]:
            c.mux(p)
    with pytest.raises(VideoOpenError, match=r"audio.mkv: has no video stream \(streams: audio\)"):
        VideoReader(audio)


def test_fewer_than_16_frames(tmp_path, videos):
    short = write_video(tmp_path / "short.mkv", numbered_frames(10))
    with pytest.raises(VideoTooShortError, match=r"short.mkv: 10 frames; expected at least 16") as e:
        list(VideoReader(short))
    assert e.value.frames == 10
    with pytest.raises(VideoTooShortError, match=r"8 frames after resampling to 5 fps \(from 40 decoded\)"):
        list(VideoReader(videos["mkv"], fps=5))


def test_truncated_file_keeps_earlier_snippets(tmp_path, videos):
    data = videos["mkv"].read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    got = []
    with pytest.raises(VideoDecodeError, match=r"cut.mkv: the stream broke off after frame \d+") as e:
        for snip in VideoReader(cut):
            got.append(snip)
    assert len(got) == e.value.snippets >= 1
    assert 16 <= e.value.frame_index < 40 and "truncated" in str(e.value)
    np.testing.assert_array_equal(got[0].frames, videos["frames"][:16])


def test_corrupt_data_mid_way(tmp_path, videos):
    data = bytearray(videos["mkv"].read_bytes())
    mid = len(data) // 2
    data[mid:mid + 600] = bytes((b * 7 + 13) % 256 for b in data[mid:mid + 600])
    bad = tmp_path / "bad.mkv"
    bad.write_bytes(bytes(data))
    got = []
    with pytest.raises(VideoDecodeError, match=r"bad.mkv: .*frame (\d+)") as e:
        for snip in VideoReader(bad):
            got.append(snip.frames)
    assert len(got) == e.value.snippets >= 1 and e.value.frame_index >= 16
    np.testing.assert_array_equal(got[0], videos["frames"][:16])


def test_missing_pyav_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(VideoDependencyError, match=r'pip install "bnwvad\[video\]"'):
        VideoReader(tmp_path / "a.mp4")


# -- the extractor runner and the pipeline ------------------------------------------------------
def test_extractor_runner_on_toy_graph(toy_extractor):
    from bnwvad.runtime.extractor import ExtractorRunner

    ref = NumpyToy()
    clips = np.random.default_rng(0).uniform(-1, 1, (5, 3, 16, 224, 224)).astype(np.float32)
    with ExtractorRunner(toy_extractor, "ort-cpu", threads=1) as ex:
        assert ex.batch == 4 and ex.feature_dim == TOY_DIM and ex.backend == "ort-cpu"
        assert ex.meta.clip_shape == (3, 16, 224, 224) and "clips per call" in ex.describe()
        np.testing.assert_allclose(ex.run(clips), ref.run(clips), rtol=1e-4, atol=1e-5)
        with pytest.raises(InputError, match=r"shape \(3, 16, 224, 224\); expected \(N >= 1, 3, 16, 224, 224\)"):
            ex.run(clips[0])
        with pytest.raises(InputError, match="dtype uint8; expected float32"):
            ex.run(np.zeros((1, 3, 16, 224, 224), np.uint8))
        with pytest.raises(InputError, match=r"values in \[0, 255\]; expected \[-1, 1\]"):
            ex.run(clips[:1] * 0 + np.float32(255) * (clips[:1] > 0))
        bad = clips[:1].copy()
        bad[0, 0, 0, 0, 0] = np.nan
        with pytest.raises(InputError, match="non-finite"):
            ex.run(bad)
    with ExtractorRunner(toy_extractor, "ort-cpu", batch=2) as ex:
        assert ex.batch == 2
        np.testing.assert_allclose(ex.run(clips), ref.run(clips), rtol=1e-4, atol=1e-5)


def test_runners_refuse_each_others_graphs(toy_extractor, toy_onnx, tmp_path):
    from bnwvad.runtime import load_runner
    from bnwvad.runtime.extractor import ExtractorRunner

    with pytest.raises(ModelLoadError, match="a BN-WVAD detector graph"):
        ExtractorRunner(toy_onnx, "ort-cpu")
    with pytest.raises(ModelLoadError, match=r"expected inputs \['features', 'lengths'\]"):
        load_runner(toy_extractor, "ort-cpu")
    odd = build_toy_extractor(tmp_path / "odd.onnx", metadata={"feature_dim": 9})
    with pytest.raises(ModelLoadError, match="feature_dim = 9 but the graph's output has 8"):
        ExtractorRunner(odd, "ort-cpu")
    with pytest.raises(ModelLoadError, match="no such model file"):
        ExtractorRunner(tmp_path / "none.onnx", "ort-cpu")


@pytest.mark.parametrize("crops", [1, 5, 10])
def test_extract_video_matches_frames(toy_extractor, videos, crops):
    from bnwvad.runtime.extractor import ExtractorRunner, extract_frames, extract_video

    seen = []
    with ExtractorRunner(toy_extractor, "ort-cpu", threads=1) as ex:
        feats = extract_video(videos["mkv"], ex, crops=crops, progress=seen.append)
    assert feats.shape == (2, crops, TOY_DIM) and feats.dtype == np.float32
    ref = extract_frames(videos["frames"], NumpyToy(), crops)
    np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-5)
    assert [p.snippets for p in seen] == [1, 2] and seen[-1].frames == 32
    assert seen[-1].video_seconds == pytest.approx(32 / 25) and seen[-1].realtime_factor > 0


def test_extract_video_batches_snippets_per_call(videos):
    from bnwvad.runtime.extractor import extract_video

    toy = NumpyToy(batch=10)
    feats = extract_video(videos["gray"], toy, crops=1, fps=50)            # 79 frames -> 4 snippets
    assert feats.shape == (4, 1, TOY_DIM)
    assert toy.calls == [4]                                                # crops of 4 snippets in one call
    toy = NumpyToy(batch=10)
    extract_video(videos["gray"], toy, crops=5)
    assert toy.calls == [10]
    with pytest.raises(InputError, match="crops = 3"):
        extract_video(videos["gray"], toy, crops=3)


def test_extract_video_errors_after_earlier_snippets(tmp_path, videos):
    from bnwvad.runtime.extractor import iter_video_features

    data = videos["mkv"].read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    got = []
    with pytest.raises(VideoDecodeError):
        for f in iter_video_features(cut, NumpyToy(batch=1), crops=1):
            got.append(f)
    assert len(got) == 1


EXTRACT_WITHOUT_TORCH = NO_TORCH + """
from bnwvad.runtime.extractor import ExtractorRunner, extract_video
from bnwvad.runtime.video import VideoReader
import numpy as np
with ExtractorRunner(sys.argv[1], "ort-cpu", threads=1) as ex:
    feats = extract_video(sys.argv[2], ex, crops=5)
np.save(sys.argv[3], feats)
leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not leaked, leaked
print("NO-TORCH-OK", feats.shape)
"""


def test_extraction_works_with_torch_unimportable(toy_extractor, videos, tmp_path):
    out = tmp_path / "f.npy"
    proc = subprocess.run([sys.executable, "-c", EXTRACT_WITHOUT_TORCH, str(toy_extractor), str(videos["mp4"]), str(out)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert "NO-TORCH-OK (2, 5, 8)" in proc.stdout, proc.stdout + proc.stderr
    ref = extract_frames_from_file(videos["mp4"], 5)
    np.testing.assert_allclose(np.load(out), ref, rtol=1e-4, atol=1e-5)


def extract_frames_from_file(path, crops):
    from bnwvad.runtime.extractor import extract_frames

    with VideoReader(path) as r:
        frames = np.concatenate([s.frames for s in r])
    return extract_frames(frames, NumpyToy(), crops)


def test_snippets_gathered_before_a_break_are_still_computed():
    from bnwvad.runtime.extractor import iter_clip_features
    from bnwvad.runtime.video import VideoDecodeError

    class Fixed:
        batch = 8                    # several snippets per call: a break leaves some pending

        def run(self, clips):
            return np.full((clips.shape[0], 4), 1.0, np.float32)

    def snippets():
        for _ in range(3):
            yield np.zeros((16, 256, 256, 3), np.uint8)
        raise VideoDecodeError("broken.mp4: decoding failed at frame 48")

    got = []
    with pytest.raises(VideoDecodeError, match="frame 48"):
        for feats in iter_clip_features(snippets(), Fixed(), crops=1, resized=True):
            got.append(feats)
    assert len(got) == 3 and got[0].shape == (1, 4)
