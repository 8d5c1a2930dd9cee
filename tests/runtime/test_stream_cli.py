"""bnwvad-stream as a user runs it: real subprocesses on the toy graph (D = 8, 3 crops).

Its numbers must be exactly those of `score_windowed` on the concatenated snippets (the
streaming and offline paths of bnwvad.runtime.stream); its events those of
`find_events_merged`; its threshold that of `calibrate_threshold` on windowed scores.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _helpers import run_without_torch
from _toy_onnx import TOY_CROPS, TOY_D, build_toy_onnx, toy_metadata
from bnwvad.runtime import calibrate_threshold, load_runner
from bnwvad.runtime.online_events import find_events_merged
from bnwvad.runtime.stream import score_windowed

TIMEOUT = 120


def stream_cmd(*args) -> list[str]:
    exe = Path(sys.executable).with_name("bnwvad-stream")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "bnwvad.runtime.stream_cli"]
    return cmd + [str(a) for a in args]


def npy_bytes(a: np.ndarray) -> bytes:
    f = io.BytesIO()
    np.save(f, a, allow_pickle=False)
    return f.getvalue()


def chunks(sizes, seed=0, crops=TOY_CROPS, d=TOY_D) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(k, crops, d)).astype(np.float32) for k in sizes]


def offline(model, arrays, w, l=0, s=1) -> dict:
    """score_windowed on the concatenation of the arrays: (C, T, D)."""
    x = np.concatenate(arrays).transpose(1, 0, 2)
    with load_runner(model, "ort-cpu", threads=1) as r:
        return score_windowed(r, np.ascontiguousarray(x), w, l, s)


def parse(text: str) -> tuple[dict, list[dict], list[dict]]:
    """(header, snippet lines, event lines) of one run's JSON lines."""
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert rows and "stream" in rows[0], rows[:1]
    return (rows[0]["stream"], [r for r in rows[1:] if "snippet" in r and "event" not in r],
            [r for r in rows[1:] if "event" in r])


def run(args, model, *, stdin: bytes | None = None, timeout=TIMEOUT):
    return subprocess.run(stream_cmd(*args, "--model", model), input=stdin,
                          capture_output=True, timeout=timeout)


def assert_matches(snips: list[dict], ref: dict, first: int = 0) -> None:
    got = {k: np.array([r[k] for r in snips]) for k in ("score", "dfm", "anomaly")}
    assert [r["snippet"] for r in snips] == list(range(first, first + len(ref["anomaly"])))
    for k in got:
        assert np.abs(got[k] - ref[k]).max() <= 1e-6, (k, np.abs(got[k] - ref[k]).max())
    assert all(r["latency_ms"] >= 0 for r in snips)


# -- stdin ----------------------------------------------------------------------------------------
def test_stdin_arrays_back_to_back_score_as_the_concatenation(toy_onnx):
    arrays = chunks([3, 5, 1, 7, 2, 6]) + [chunks([4], seed=6)[0].astype(np.float64)]   # float64: cast
    proc = run(["-", "--window", 5, "--lookahead", 2, "--step", 3], toy_onnx,
               stdin=b"".join(npy_bytes(a) for a in arrays))
    assert proc.returncode == 0, proc.stderr.decode()
    header, snips, events = parse(proc.stdout.decode())
    assert_matches(snips, offline(toy_onnx, arrays, 5, 2, 3))
    assert events == []
    # The header says which model made the lines, and how.
    assert header["weights_digest"] == "sha256:toyw" and header["model"] == str(toy_onnx)
    assert (header["window"], header["lookahead"], header["step"], header["delay_snippets"]) == (5, 2, 3, 4)
    assert header["threshold"] is None and header["format"] == "bnwvad-stream"
    # The first stderr line: model, backend, W / L / S, the delay, the threshold's source.
    first = proc.stderr.decode().splitlines()[0]
    for bit in (str(toy_onnx), "backend ort-cpu", "window 5, lookahead 2, step 3", "at most 4 snippet(s)",
                "no threshold"):
        assert bit in first, (bit, first)
    assert "end of input: 28 snippet(s) from 7 array(s)" in proc.stderr.decode()


def test_one_crop_arrays_and_any_crops(tmp_path):
    model = build_toy_onnx(tmp_path / "one.onnx", metadata=toy_metadata(crops=1))
    arrays = [a[:, 0] for a in chunks([4, 3], seed=2)]            # (k, D)
    proc = run(["-", "-w", 3], model, stdin=b"".join(npy_bytes(a) for a in arrays))
    assert proc.returncode == 0, proc.stderr.decode()
    _, snips, _ = parse(proc.stdout.decode())
    x = np.concatenate(arrays)[None]
    with load_runner(model, "ort-cpu", threads=1) as r:
        assert_matches(snips, score_windowed(r, x, 3))


def test_bad_arrays_on_stdin_are_named_and_skipped(toy_onnx):
    good = chunks([4, 3, 5], seed=1)
    bad = [np.ones((2, TOY_CROPS, 5), np.float32),                  # wrong D
           np.full((2, TOY_CROPS, TOY_D), np.nan, np.float32),      # NaN
           np.ones((2, TOY_CROPS, TOY_D), np.int32),                # integer dtype
           np.ones((2, 2, TOY_D), np.float32),                      # 2 crops, the model has 3
           np.ones((2, 1, 1, TOY_D), np.float32)]                   # 4-D
    stream = [good[0], *bad, good[1], good[2]]
    proc = run(["-", "-w", 4, "-l", 1], toy_onnx, stdin=b"".join(npy_bytes(a) for a in stream))
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    _, snips, _ = parse(proc.stdout.decode())
    assert_matches(snips, offline(toy_onnx, good, 4, 1))            # the rest scored as one stream
    for i, what in [(1, "D = 5"), (2, "nan"), (3, "dtype int32"), (4, "2 crops"), (5, "shape (2, 1, 1, 8)")]:
        line = next((ln for ln in err.splitlines() if f"stdin array #{i} " in ln), None)
        assert line is not None and line.startswith("FAILED") and what in line, (i, err)
    assert "5 snippet file(s)/array(s) skipped" in err


def test_bytes_that_are_not_npy_end_a_stdin_stream(toy_onnx):
    good = chunks([6], seed=3)
    proc = run(["-", "-w", 3], toy_onnx, stdin=npy_bytes(good[0]) + b"garbage, not an array" + npy_bytes(good[0]))
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    _, snips, _ = parse(proc.stdout.decode())
    assert_matches(snips, offline(toy_onnx, good, 3))                # flushed: every snippet before it
    assert "stdin array #1" in err and "not a .npy array" in err and "cannot be framed" in err
    # A stream cut inside an array: named, the rest scored.
    cut = npy_bytes(good[0]) + npy_bytes(good[0])[:-10]
    proc = run(["-", "-w", 3], toy_onnx, stdin=cut)
    assert proc.returncode == 1 and "ended inside this array" in proc.stderr.decode()
    assert len(parse(proc.stdout.decode())[1]) == 6


def test_idle_timeout_on_an_open_stdin(toy_onnx):
    arrays = chunks([5], seed=4)
    p = subprocess.Popen(stream_cmd("-", "-w", 3, "-l", 2, "--idle-timeout", "1", "--model", toy_onnx),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        p.stdin.write(npy_bytes(arrays[0]))
        p.stdin.flush()                                  # and stays open: the producer stalls
        p.wait(timeout=TIMEOUT)
        out, err = p.stdout.read(), p.stderr.read()
        p.stdin.close()
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err.decode()
    assert "no snippet arrived for 1 s (--idle-timeout)" in err.decode()
    assert_matches(parse(out.decode())[1], offline(toy_onnx, arrays, 3, 2))     # the tail is flushed


# -- directory ------------------------------------------------------------------------------------
def write_atomic(folder: Path, name: str, a: np.ndarray) -> None:
    tmp = folder / f".{name}.part"                # a dot name: ignored until renamed
    with open(tmp, "wb") as f:
        np.save(f, a)
    os.replace(tmp, folder / name)


def test_directory_fed_while_the_stream_runs(toy_onnx, tmp_path):
    src = tmp_path / "incoming"
    src.mkdir()
    arrays = chunks([2, 3, 1, 4, 2, 3], seed=7)
    out = tmp_path / "out.jsonl"
    p = subprocess.Popen(stream_cmd(src, "-w", 4, "-l", 1, "-s", 2, "--poll", "0.05", "--idle-timeout", "2",
                                    "--output", out, "--model", toy_onnx),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        (src / "notes.tmp").write_text("ignored: a .tmp name")
        (src / ".hidden.npy").write_bytes(b"ignored: a dot name")
        for i, a in enumerate(arrays):
            name = f"snip_{i:04d}.npy"
            if i == 3:                               # written in place in two halves: retried
                data = npy_bytes(a)
                with open(src / name, "wb") as f:
                    f.write(data[:60])                   # not even a complete header yet
                    f.flush()
                    time.sleep(0.4)
                    f.write(data[60:-8])
                    f.flush()
                    time.sleep(0.4)
                    f.write(data[-8:])
            else:
                write_atomic(src, name, a)
            time.sleep(0.25)
        stdout, err = p.communicate(timeout=TIMEOUT)      # ends by --idle-timeout
    finally:
        if p.poll() is None:
            p.kill()
    err = err.decode()
    assert p.returncode == 0, err
    assert stdout == b""                                   # everything went to --output
    header, snips, _ = parse(out.read_text())
    assert header["source"] == str(src)
    assert_matches(snips, offline(toy_onnx, arrays, 4, 1, 2))
    assert "no snippet arrived for 2 s (--idle-timeout)" in err and "FAILED" not in err


def test_bad_snippet_files_are_named_and_skipped(toy_onnx, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    good = chunks([3, 4, 2], seed=8)
    np.save(src / "a0.npy", good[0])
    (src / "a1.npy").write_bytes(b"this is not a numpy file at all")
    np.save(src / "a2.npy", np.ones((2, TOY_CROPS, 5), np.float32))
    np.save(src / "a3.npy", good[1])
    bad_nan = good[1].copy()
    bad_nan[1, 2, 3] = np.nan
    np.save(src / "a4.npy", bad_nan)
    (src / "a5.npy").write_bytes(npy_bytes(good[2])[:70])     # truncated and never completed
    (src / "a6").mkdir()
    np.save(src / "a7.npy", good[2])
    proc = run([src, "-w", 3, "-l", 1, "--poll", "0.05", "--idle-timeout", "1.5"], toy_onnx)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    _, snips, _ = parse(proc.stdout.decode())
    assert_matches(snips, offline(toy_onnx, good, 3, 1))
    for name, what in [("a1.npy", "not a .npy array"), ("a2.npy", "D = 5"), ("a4.npy", "nan"),
                       ("a5.npy", "truncated"), ("a6", "is a directory")]:
        line = next((ln for ln in err.splitlines() if f"{src / name}:" in ln), None)
        assert line is not None and line.startswith("FAILED") and what in line, (name, err)
    assert "5 snippet file(s)/array(s) skipped" in err


def test_idle_timeout_on_an_empty_directory(toy_onnx, tmp_path):
    proc = run([tmp_path, "-w", 3, "--idle-timeout", "0.5"], toy_onnx)
    assert proc.returncode == 0, proc.stderr.decode()
    header, snips, events = parse(proc.stdout.decode())
    assert snips == [] and events == []
    assert "no snippet arrived for 0.5 s" in proc.stderr.decode()


# -- interruption ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_stream_writes_what_is_final_and_exits_130(toy_onnx, tmp_path, sig):
    out = tmp_path / "out.jsonl"
    arrays = chunks([4, 4, 4], seed=9)
    p = subprocess.Popen(stream_cmd("-", "-w", 4, "-l", 2, "--threshold", "-1", "--output", out,
                                    "--model", toy_onnx), stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for a in arrays:
            p.stdin.write(npy_bytes(a))
        p.stdin.flush()                           # stdin stays open: the process blocks waiting for more
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = out.read_text() if out.exists() else ""
            if sum('"snippet": 9,' in line and "event" not in line for line in text.splitlines()):
                break
            time.sleep(0.05)
        p.send_signal(sig)
        _, err = p.communicate(timeout=TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
    err = err.decode()
    assert p.returncode == 130, err
    header, snips, events = parse(out.read_text())
    ref = offline(toy_onnx, arrays, 4, 2)
    # Final: 12 arrived, lookahead 2 -> snippets 0..9, exactly the streamed values; 10, 11 not scored.
    assert [r["snippet"] for r in snips] == list(range(10))
    part = {k: v[:10] for k, v in ref.items()}
    # (windows of snippets < 10 end at most at 11: the same inputs as offline)
    assert_matches(snips, part)
    # Every score is above -1: one event, opened at 0 and closed by the interruption.
    assert [e["event"] for e in events] == ["start", "end"]
    assert events[1]["snippet"] == 9 and events[1]["start_snippet"] == 0
    assert f"interrupted ({signal.Signals(sig).name})" in err and "10 snippet(s) final" in err
    assert "2 received but not final" in err


# -- events and thresholds ------------------------------------------------------------------------
def test_events_are_the_offline_events_of_the_windowed_scores(toy_onnx):
    arrays = chunks([7, 9, 5, 11, 8], seed=10)
    ref = offline(toy_onnx, arrays, 6, 1)
    thr = float(np.quantile(ref["anomaly"], 0.6))
    proc = run(["-", "-w", 6, "-l", 1, "--threshold", thr, "--min-event-snippets", 2, "--max-gap", 1, "--fps", 24],
               toy_onnx, stdin=b"".join(npy_bytes(a) for a in arrays))
    assert proc.returncode == 0, proc.stderr.decode()
    header, snips, events = parse(proc.stdout.decode())
    assert header["threshold"] == thr and header["threshold_source"] == "given" and header["fps"] == 24
    assert_matches(snips, ref)
    want = find_events_merged(np.array([r["anomaly"] for r in snips]), thr, fps=24, min_snippets=2, max_gap=1)
    assert want, "the test needs events"
    starts = [e for e in events if e["event"] == "start"]
    ends = [e for e in events if e["event"] == "end"]
    assert [e["start_snippet"] for e in starts] == [e.start_snippet for e in want]
    assert [(e["start_snippet"], e["snippet"] + 1, e["snippets"]) for e in ends] == \
        [(e.start_snippet, e.end_snippet, e.snippets) for e in want]
    assert all(e["end_s"] == pytest.approx(w.end_s, abs=1e-3) for e, w in zip(ends, want))
    # Each event line comes right after the snippet line that made it known.
    rows = [json.loads(x) for x in proc.stdout.decode().splitlines()[1:]]
    for i, r in enumerate(rows):
        if "event" in r:
            prev = next(x for x in reversed(rows[:i]) if "event" not in x)
            assert prev["snippet"] == r["at"]
    assert f"threshold {thr:.6g} given" in proc.stderr.decode().splitlines()[0]


def test_calibration_scores_the_normal_videos_with_the_same_window(toy_onnx, tmp_path):
    normal = tmp_path / "normal"
    normal.mkdir()
    vids = [np.random.default_rng(20 + i).normal(size=(t, TOY_CROPS, TOY_D)).astype(np.float32)
            for i, t in enumerate((30, 17, 41))]
    for i, v in enumerate(vids):
        np.save(normal / f"n{i}.npy", v)                       # (T, C, D), bnwvad-infer's stacked layout
    np.save(normal / "broken.npy", np.ones((5, TOY_CROPS, 3), np.float32))
    arrays = chunks([6, 6], seed=11)
    proc = run(["-", "-w", 5, "-l", 2, "-s", 2, "--calibrate", normal, "--false-alarm-rate", "0.1"], toy_onnx,
               stdin=b"".join(npy_bytes(a) for a in arrays))
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    header, snips, _ = parse(proc.stdout.decode())
    with load_runner(toy_onnx, "ort-cpu", threads=1) as r:
        cal = calibrate_threshold([score_windowed(r, v.transpose(1, 0, 2).copy(), 5, 2, 2)["anomaly"]
                                   for v in vids], 0.1)
    assert header["threshold_source"] == "calibrated" and header["threshold"] == pytest.approx(cal.threshold, abs=1e-9)
    assert header["calibration"]["videos"] == 3 and header["calibration"]["snippets"] == 88
    assert "calibrated on 3 normal video(s)" in err.splitlines()[0]
    assert "FAILED (calibration)" in err and "broken.npy" in err        # named, not fatal
    assert_matches(snips, offline(toy_onnx, arrays, 5, 2, 2))


# -- what cannot run: exit 2, one clear line ---------------------------------------------------------
def test_bad_options_exit_2(toy_onnx, tmp_path):
    (tmp_path / "afile").write_text("x")
    cases = [
        ([tmp_path], "Missing option '--window'"),
        ([tmp_path, "-w", 0], "--window"),
        ([tmp_path, "-w", 3, "--threshold", 1, "--calibrate", tmp_path], "not both"),
        ([tmp_path, "-w", 3, "--crops", 3, "--any-crops"], "not both"),
        ([tmp_path / "nope", "-w", 3], "does not exist"),
        ([tmp_path / "afile", "-w", 3], "is not a directory"),
        ([tmp_path, "-w", 3, "--output", tmp_path], "is a directory"),
        ([tmp_path, "-w", 3, "--memory-budget", "1KiB"], "memory budget"),
        ([tmp_path, "-w", 3, "--calibrate", tmp_path / "afile"], "no calibration video could be scored"),
    ]
    for args, message in cases:
        proc = run(args, toy_onnx, timeout=60)
        err = proc.stderr.decode()
        assert proc.returncode == 2 and message in err, (args, proc.returncode, err)
        assert proc.stdout == b"", args
        assert "Traceback" not in err, err
    proc = subprocess.run(stream_cmd(tmp_path, "-w", 3, "--model", tmp_path / "missing.onnx"),
                          capture_output=True, timeout=60)
    assert proc.returncode == 2 and "missing.onnx" in proc.stderr.decode()


def test_output_file_appends_runs_and_refuses_another_model(toy_onnx, tmp_path):
    out = tmp_path / "cam.jsonl"
    data = npy_bytes(chunks([3], seed=12)[0])
    for _ in range(2):
        proc = run(["-", "-w", 2, "--output", out], toy_onnx, stdin=data)
        assert proc.returncode == 0, proc.stderr.decode()
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [i for i, r in enumerate(rows) if "stream" in r] == [0, 4]        # one header per run
    other = build_toy_onnx(tmp_path / "other.onnx", metadata=toy_metadata(weights_digest="sha256:other"))
    proc = run(["-", "-w", 2, "--output", out], other, stdin=data)
    assert proc.returncode == 2 and "another model" in proc.stderr.decode()
    assert len(out.read_text().splitlines()) == 8                          # untouched
    proc = run(["-", "-w", 2, "--output", out, "--append-other-model"], other, stdin=data)
    assert proc.returncode == 0 and len(out.read_text().splitlines()) == 12
    # A model that fails to load leaves no new file behind.
    proc = run(["-", "-w", 2, "--output", tmp_path / "new.jsonl"], tmp_path / "missing.onnx", stdin=data)
    assert proc.returncode == 2 and not (tmp_path / "new.jsonl").exists()


# -- torch-free ----------------------------------------------------------------------------------
def test_the_stream_command_never_imports_torch(toy_onnx, tmp_path):
    normal = tmp_path / "normal"
    normal.mkdir()
    np.save(normal / "n.npy", chunks([12], seed=13)[0])
    arrays = chunks([4, 4], seed=14)
    proc = run_without_torch("bnwvad.runtime.stream_cli", "-", "-w", "3", "-l", "1", "--calibrate", normal,
                             "--model", toy_onnx, input=b"".join(npy_bytes(a) for a in arrays), timeout=TIMEOUT,
                             cwd=tmp_path)
    assert "NO-TORCH-OK 0" in proc.stderr.decode(), proc.stderr.decode()
    assert len(parse(proc.stdout.decode())[1]) == 8
