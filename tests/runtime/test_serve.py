"""bnwvad-serve (bnwvad.runtime.serve, serve_cli) and its client (bnwvad.client).

The request decoding and the compute queue are plain numpy / asyncio and are tested directly.
The service tests start `bnwvad-serve` itself (a local Ray cluster, 2 CPUs, a free loopback port)
once for the module with the toy model (D = 8, 3 crops), talk to it over HTTP with
bnwvad.client and raw urllib, and stop it with SIGINT at the end (a finalizer makes sure the
process and the cluster it started are gone). They are marked slow: the cluster alone takes
20-30 s to start on the 2-core machine. Skipped where ray is not importable.
"""
from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import os
import pickle
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from bnwvad.features import FeatureFileError, load_features
from bnwvad.runtime.errors import InputError
from bnwvad.runtime.serve import (BODY_LABEL, ComputeQueue, RequestError, ServeConfig, bucket_batch_size, bucket_of,
                                  decode_features, error_status)

from _toy_onnx import TOY_CROPS, TOY_D

HAVE_RAY = importlib.util.find_spec("ray") is not None      # without importing it (seconds)

needs_ray = pytest.mark.skipif(not HAVE_RAY, reason='ray[serve] is not installed (pip install "bnwvad[ray]")')
LAUNCH = ("import sys; from bnwvad._extras import launch; "
          "sys.exit(launch('bnwvad-serve', 'bnwvad.runtime.serve_cli'))")
START_TIMEOUT_S = 240
MAX_BODY = 65536                    # --max-body-mb 0.0625
MAX_SNIPPETS = 300
THRESHOLD = 0.3


def serve_command(*args) -> list[str]:
    return [sys.executable, "-c", LAUNCH, *map(str, args)]


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def video(t: int, seed: int = 0, c: int = TOY_CROPS) -> np.ndarray:
    """(T, C, D) stacked crops, float32."""
    return np.random.default_rng(seed).normal(size=(t, c, TOY_D)).astype(np.float32)


# -- request decoding: the CLI's messages ------------------------------------------------------
def _decode(a, layout="auto"):
    return decode_features(npy(a) if isinstance(a, np.ndarray) else a, "application/octet-stream",
                           feature_dim=TOY_D, crops_hint=TOY_CROPS, layout=layout, max_snippets=MAX_SNIPPETS)


def _file_message(tmp_path, a) -> str:
    """What bnwvad-infer's reader says of the same array in a file, with the body's label."""
    p = tmp_path / "x.npy"
    if isinstance(a, bytes):
        p.write_bytes(a)
    else:
        np.save(p, a, allow_pickle=a.dtype.hasobject)
    with pytest.raises(FeatureFileError) as e:
        load_features(p, feature_dim=TOY_D)
    return str(e.value).replace(str(p), BODY_LABEL)


@pytest.mark.parametrize("case", ["wrong_d", "nan", "int", "garbage", "pickle", "object", "truncated", "huge64"])
def test_decode_errors_match_the_cli(tmp_path, case):
    x = video(10)
    arr = {"wrong_d": np.zeros((10, 3, 7), np.float32), "nan": np.where(np.arange(240).reshape(10, 3, 8) == 17,
                                                                          np.nan, x).astype(np.float32),
           "int": np.zeros((10, 3, 8), np.int64), "object": np.array([[1, 2], [3, 4]], dtype=object),
           "huge64": np.full((10, 3, 8), 1e300)}.get(case)
    body = {"garbage": b"this is not a numpy file at all",
            "pickle": pickle.dumps(np.zeros((3, 8), np.float32)),
            "truncated": npy(x)[:-20]}.get(case)
    if arr is not None:
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=arr.dtype.hasobject)
        body = buf.getvalue()
    want = _file_message(tmp_path, body)
    with pytest.raises((FeatureFileError, InputError)) as e:
        _decode(body)
    assert str(e.value) == want
    assert error_status(e.value) == 422


def test_decode_layouts_and_dtypes():
    x = video(20)                                  # (T, C, D)
    ctd = np.ascontiguousarray(x.transpose(1, 0, 2))
    a, _ = _decode(x)
    assert a.shape == (3, 20, 8) and a.dtype == np.float32 and a.flags.c_contiguous
    np.testing.assert_array_equal(a, ctd)
    b, _ = _decode(ctd, layout="CTD")
    np.testing.assert_array_equal(b, ctd)
    c, _ = _decode(x.astype(np.float64))            # float64 within range: converted, as the CLI does
    np.testing.assert_array_equal(c, ctd)
    f, _ = _decode(np.asfortranarray(x))
    np.testing.assert_array_equal(f, ctd)
    one, _ = _decode(x[:, 0])
    assert one.shape == (1, 20, 8)
    with pytest.raises(FeatureFileError, match=r"ambiguous.*layout=TCD"):
        _decode(ctd)                                # (3, 20, 8) looks like (C, T, D)
    with pytest.raises(RequestError) as e:
        _decode(x, layout="XY")
    assert e.value.status == 400
    js, opts = decode_features(json.dumps({"features": x.tolist(), "threshold": 0.5}).encode(), "application/json",
                               feature_dim=TOY_D, crops_hint=TOY_CROPS)
    np.testing.assert_array_equal(js, ctd)
    assert opts == {"threshold": 0.5}
    with pytest.raises(InputError, match="rectangular"):
        decode_features(b'{"features": [[1, 2], [3]]}', "application/json", feature_dim=2, crops_hint=None)
    with pytest.raises(RequestError) as e:
        decode_features(b"{nope", "application/json", feature_dim=8, crops_hint=None)
    assert e.value.status == 400


def test_decode_limit_on_snippets():
    with pytest.raises(RequestError) as e:
        _decode(video(MAX_SNIPPETS + 1))
    assert e.value.status == 413 and f"limit of {MAX_SNIPPETS} snippets" in e.value.message


def test_buckets():
    assert [bucket_of(t, 4096) for t in (1, 16, 17, 100, 128, 129, 4096)] == [16, 16, 32, 128, 128, 256, 4096]
    assert bucket_of(5000, 4096) == 4096 and bucket_of(300, 300) == 512
    assert bucket_batch_size(16, 5, 16, 1024) == 12 and bucket_batch_size(128, 5, 16, 1024) == 1
    assert bucket_batch_size(4096, 5, 16, None) == 16 and bucket_batch_size(16, 3, 4, 1024) == 4


def test_compute_queue_runs_short_buckets_first_and_ages():
    order = []
    gate = threading.Event()

    async def main():
        q = ComputeQueue(aging_s=0.2)
        first = asyncio.ensure_future(q.submit(1, gate.wait))        # occupies the thread
        await asyncio.sleep(0.05)
        jobs = [asyncio.ensure_future(q.submit(b, order.append, b)) for b in (512, 16, 64)]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(first, *jobs)
        order.clear()
        gate.clear()
        first = asyncio.ensure_future(q.submit(1, gate.wait))
        await asyncio.sleep(0.05)
        old = asyncio.ensure_future(q.submit(4096, order.append, 4096))
        await asyncio.sleep(0.3)                                     # older than aging_s
        new = asyncio.ensure_future(q.submit(16, order.append, 16))
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(first, old, new)
        with pytest.raises(ZeroDivisionError):
            await q.submit(1, lambda: 1 / 0)
        q.close()
        return order

    assert asyncio.run(main()) == [4096, 16]


def test_config_roundtrip():
    cfg = ServeConfig(model="m.onnx", threshold=1.5, max_batch=4, streams=True)
    assert ServeConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.gpus("cuda") == 0.5 and cfg.gpus("cpu") == 0.0
    with pytest.raises(ValueError):
        ServeConfig(model="m", crops=0)


def test_import_does_not_pull_ray_or_torch():
    code = ("import sys, bnwvad.runtime, bnwvad.runtime.serve, bnwvad.runtime.serve_cli, bnwvad.client; "
            "print(sorted(m for m in ('ray', 'torch', 'starlette') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_missing_model_exits_2_before_any_cluster(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    for model, words in ((bad, "could not load the model"), (tmp_path / "none.onnx", "no such model file")):
        out = subprocess.run(serve_command("--model", model, "--port", 0), capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 2, out.stderr
        assert words in out.stderr and str(model.name) in out.stderr
        assert "serving at" not in out.stdout


# -- the service --------------------------------------------------------------------------------
class Server:
    def __init__(self, proc: subprocess.Popen, url: str, stderr: Path):
        self.proc, self.url, self.stderr = proc, url, stderr

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")[-4000:]


def _start(args, tmp: Path, name: str) -> tuple[subprocess.Popen, Path, queue.Queue]:
    err = tmp / f"{name}.stderr"
    proc = subprocess.Popen(serve_command(*args), stdout=subprocess.PIPE, stderr=open(err, "wb"), text=True,
                            cwd=tmp, start_new_session=True)
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return proc, err, lines


def _wait_url(proc, lines: queue.Queue, err: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        if line is None:
            break
        m = re.search(r"serving at (http://\S+)", line)
        if m:
            return m.group(1)
    proc.poll()
    raise AssertionError(f"bnwvad-serve did not come up (rc {proc.returncode}): {err.read_text()[-3000:]}")


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _stop(proc: subprocess.Popen, kids: list[int], timeout: float = 60.0) -> int | None:
    """SIGINT, then (if needed) SIGKILL of the process group and of every process it had started."""
    import psutil

    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    for pid in kids:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    return proc.returncode


@pytest.fixture(scope="module")
def server(toy_onnx, tmp_path_factory):
    if not HAVE_RAY:
        pytest.skip('ray[serve] is not installed (pip install "bnwvad[ray]")')
    tmp = tmp_path_factory.mktemp("serve")
    args = ["--model", toy_onnx, "--port", 0, "--num-cpus", 2, "--threshold", THRESHOLD, "--streams",
            "--max-body-mb", MAX_BODY / (1 << 20), "--max-snippets", MAX_SNIPPETS, "--max-batch", 8,
            "--batch-wait-ms", 100, "--fps", 24]
    proc, err, lines = _start(args, tmp, "server")
    kids: list[int] = []
    try:
        url = _wait_url(proc, lines, err, START_TIMEOUT_S)
        kids = _descendants(proc.pid)
        srv = Server(proc, url, err)
        srv.kids = kids
        yield srv
    finally:
        _stop(proc, kids or _descendants(proc.pid))


@pytest.fixture(scope="module")
def scorer(toy_onnx):
    from bnwvad.runtime import Scorer, load_runner

    return Scorer(load_runner(toy_onnx, "ort-cpu"))


@pytest.fixture
def client(server):
    from bnwvad.client import Client

    return Client(server.url, timeout=120)


def raw(server, method, path, body=None, ctype="application/octet-stream"):
    """(status, JSON answer) over plain urllib."""
    req = urllib.request.Request(server.url + path, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def in_process(scorer, x_tcd: np.ndarray):
    return scorer.score({"v": np.ascontiguousarray(x_tcd.transpose(1, 0, 2))})[0]


def assert_same(answer: dict, ref, tol=1e-6):
    for k in ("score", "dfm", "anomaly"):
        got = np.asarray(answer[k], np.float64)
        assert got.shape == getattr(ref, k).shape, k
        np.testing.assert_allclose(got, getattr(ref, k), rtol=0, atol=tol, err_msg=k)


@pytest.mark.slow
@needs_ray
def test_health_and_model(server, client, toy_onnx):
    from bnwvad.runtime import load_runner

    assert client.health()["status"] == "ok"
    info = client.model()
    runner = load_runner(toy_onnx, "ort-cpu")
    assert info["model"] == json.loads(json.dumps(runner.meta.to_dict()))
    assert info["backend"] == "ort-cpu" and info["threshold"] == THRESHOLD and info["threshold_source"] == "given"
    assert info["weights_digest"] == "sha256:toyw"
    assert info["limits"] == {"max_body_bytes": MAX_BODY, "max_snippets": MAX_SNIPPETS}
    status, doc = raw(server, "GET", "/healthz")
    assert status == 200 and doc["status"] == "ok"


@pytest.mark.slow
@needs_ray
def test_scores_equal_in_process(server, client, scorer):
    x = video(57, seed=1)
    ref = in_process(scorer, x)
    r = client.score(x)                                           # (T, C, D): the stacked layout
    assert_same(r, ref)
    assert r["snippets"] == 57 and r["crops"] == 3 and r["frames_per_snippet"] == 16
    assert r["weights_digest"] == "sha256:toyw" and r["threshold"] == THRESHOLD
    assert_same(client.score(x.transpose(1, 0, 2), layout="CTD"), ref)
    assert_same(client.score(x, as_json=True), ref)               # JSON body
    assert_same(client.score(x.astype(np.float64)), ref)           # float64 within range: converted
    status, doc = raw(server, "POST", "/v1/score", npy(x))         # raw octet-stream
    assert status == 200
    assert_same(doc, ref)
    status, doc = raw(server, "POST", "/v1/score", json.dumps({"features": x.tolist()}).encode(), "application/json")
    assert status == 200
    assert_same(doc, ref)


@pytest.mark.slow
@needs_ray
def test_events_at_server_and_request_threshold(client, scorer):
    from bnwvad.runtime import find_events

    x = video(120, seed=2)
    ref = in_process(scorer, x)
    r = client.score(x)
    want = [e.to_dict() for e in find_events(ref.anomaly, THRESHOLD, fps=24)]
    assert r["events"] == json.loads(json.dumps(want)) and r["threshold_source"] == "given"
    hi = float(np.quantile(ref.anomaly, 0.9))
    r2 = client.score(x, threshold=hi, fps=10)
    assert r2["threshold"] == hi and r2["threshold_source"] == "request"
    assert r2["events"] == json.loads(json.dumps([e.to_dict() for e in find_events(ref.anomaly, hi, fps=10)]))


@pytest.mark.slow
@needs_ray
def test_limits_413(server, client):
    from bnwvad.client import ServerError

    big = video(1000)                                  # 96 KB of float32: over the 64 KiB body limit
    assert len(npy(big)) > MAX_BODY
    with pytest.raises(ServerError) as e:
        client.score(big)
    assert e.value.status == 413 and f"limit of {MAX_BODY} bytes" in e.value.message
    status, doc = raw(server, "POST", "/v1/score", npy(big))
    assert status == 413 and "--max-body-mb" in doc["error"]
    long = video(MAX_SNIPPETS + 50)                     # fits the body, over --max-snippets
    assert len(npy(long)) < MAX_BODY
    with pytest.raises(ServerError) as e:
        client.score(long)
    assert e.value.status == 413 and f"limit of {MAX_SNIPPETS} snippets" in e.value.message
    assert client.health()["status"] == "ok"


@pytest.mark.slow
@needs_ray
def test_bad_requests_422(server, client, tmp_path):
    from bnwvad.client import ServerError

    x = video(12)
    cases = {
        "wrong D": npy(np.zeros((12, 3, 7), np.float32)),
        "NaN": npy(np.where(np.arange(288).reshape(12, 3, 8) == 5, np.nan, x).astype(np.float32)),
        "int dtype": npy(np.zeros((12, 3, 8), np.int32)),
        "garbage": b"\x00\x01garbage bytes, not a .npy",
        "pickle": pickle.dumps({"a": 1}),
        "object array": (lambda b: (np.save(b, np.array([1, "a"], dtype=object), allow_pickle=True), b.getvalue())[1])(
            io.BytesIO()),
        "truncated": npy(x)[:-8],
    }
    for name, body in cases.items():
        want = _file_message(tmp_path, body)
        status, doc = raw(server, "POST", "/v1/score", body)
        assert status == 422, (name, doc)
        assert doc["error"] == want, name
        with pytest.raises(ServerError) as e:
            client._request("POST", "/v1/score", body=body, content_type="application/octet-stream")
        assert e.value.status == 422 and e.value.message == want
    with pytest.raises(ServerError) as e:
        client.score(x[:, :2], layout="TCD")             # 2 crops; the model wants 3
    assert e.value.status == 422 and "request body: 2 crop(s); the model expects 3" in e.value.message
    status, doc = raw(server, "POST", "/v1/score", b'{"features": [[1, 2', "application/json")
    assert status == 400 and "not valid JSON" in doc["error"]
    assert raw(server, "GET", "/v1/score")[0] == 405
    assert raw(server, "GET", "/v1/nothing")[0] == 404
    assert raw(server, "POST", "/v1/score?threshold=abc", npy(x))[0] == 400


@pytest.mark.slow
@needs_ray
def test_concurrent_requests_are_batched_by_length(client, scorer):
    lengths = [5, 9, 12, 14, 15, 16, 20, 25, 30, 31, 40, 50, 60, 64, 100, 120, 200, 250] * 2
    videos = [video(t, seed=100 + i) for i, t in enumerate(lengths)]
    refs = [in_process(scorer, v) for v in videos]
    before = client.stats()
    barrier = threading.Barrier(len(videos))

    def one(i):
        barrier.wait(30)
        return client.score(videos[i])

    with ThreadPoolExecutor(len(videos)) as pool:
        answers = list(pool.map(one, range(len(videos))))
    for a, ref, t in zip(answers, refs, lengths):
        assert a["snippets"] == t
        assert_same(a, ref)
    after = client.stats()
    batches = after["batches"] - before["batches"]
    batched = after["videos_in_batches"] - before["videos_in_batches"]
    assert batched == len(videos)
    assert batches < len(videos), after                       # some requests shared a batch
    assert after["max_batch_seen"] > 1
    assert {"16", "32", "64", "128", "256"} <= set(after["buckets"])
    for b, s in after["buckets"].items():                      # a batch never mixes buckets
        assert s["max_batch"] <= bucket_batch_size(int(b), 3, 8, 1024)


@pytest.mark.slow
@needs_ray
def test_streams(client, toy_onnx):
    from bnwvad.client import ServerError
    from bnwvad.runtime import load_runner
    from bnwvad.runtime.stream import StreamGroup

    x = video(40, seed=7)
    group = StreamGroup(load_runner(toy_onnx, "ort-cpu"), window=8, lookahead=2, step=1)
    group.open("a")
    ref = [group.push_many({"a": x[:25]})["a"], group.flush(["a"])["a"]]
    s = client.open_stream(window=8, lookahead=2)
    assert s.info["delay"] == 2 and s.info["crops"] == 3
    p1, p2 = s.push(x[:10]), s.push(x[10:25])
    done = s.close()
    got = np.concatenate([p1["snippet"], p2["snippet"], done["snippet"]])
    want = np.concatenate([r["snippet"] for r in ref])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(np.concatenate([p1["anomaly"], p2["anomaly"], done["anomaly"]]),
                               np.concatenate([r["anomaly"] for r in ref]), atol=1e-6, rtol=0)
    with pytest.raises(ServerError) as e:
        s.push(x[:1])
    assert e.value.status == 404
    s2 = client.open_stream(window=4)
    with pytest.raises(ServerError) as e:
        s2.push(np.zeros((2, 3, 5), np.float32))
    assert e.value.status == 422 and "D = 5" in e.value.message
    s2.close()


@pytest.mark.slow
@needs_ray
def test_sigint_stops_cleanly(server):
    """Last: SIGINT -> Serve and the local cluster shut down, exit 130, nothing left running."""
    import psutil

    kids = _descendants(server.proc.pid)
    assert kids, "the server started no Ray processes?"
    server.proc.send_signal(signal.SIGINT)
    rc = server.proc.wait(90)
    assert rc == 130, server.log()
    assert "stopping (SIGINT)" in server.log()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                                              for p in kids):
        time.sleep(0.5)
    left = [p for p in kids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert not left, f"processes of the cluster still running: {left}"


@pytest.mark.slow
@needs_ray
def test_replica_that_cannot_load_the_model_exits_2(tmp_path):
    """--no-check-model: only the replica loads it; its failure fails the deployment."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    proc, err, lines = _start(["--model", bad, "--port", 0, "--num-cpus", 1, "--no-check-model"], tmp_path, "bad")
    kids = []
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            kids = sorted(set(kids) | set(_descendants(proc.pid)))
            time.sleep(0.5)
        assert proc.returncode == 2, err.read_text()[-3000:]
        text = err.read_text()
        assert "a replica could not start" in text and "could not load the model" in text
        assert not any("serving at" in ln for ln in iter(lambda: lines.get(timeout=5), None))
    finally:
        _stop(proc, kids)
