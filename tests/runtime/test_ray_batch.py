"""bnwvad-infer --ray (bnwvad.runtime.ray_batch): archive scoring on Ray Data, exactly once, resumable.

The records and the option parsing are tested directly. The runs are the real command line as a
subprocess against real Ray clusters, with the toy model (D = 8, 3 crops) on a dozen feature files
(one with NaN): a cluster this module starts once (`ray.init(num_cpus=2)`) that the command joins
(`--ray=ADDRESS`), and once a local cluster the command starts itself (`--ray`). Every run's
results must equal the single-process run's within 1e-6. Fault tests: an actor that exits in the
middle of the job (the BNWVAD_RAY_TEST_DIE_AFTER hook: os._exit after K videos, once), and a driver
interrupted (SIGTERM: exit 130,
the finished videos assembled) and then killed with SIGKILL in the middle of the job, and run again. Skipped where ray is not importable;
slow (a cluster takes 20-30 s to start on the 2-core machine).
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bnwvad.runtime.io import ModelIdentity, load_results
from bnwvad.runtime.ray_batch import (PARTS, batch_size_for, describe, parse_address, read_part, run_key,
                                      source_identity, write_part)
from bnwvad.runtime.sources import VideoResult

from _toy_onnx import TOY_CROPS, TOY_D

HAVE_RAY = importlib.util.find_spec("ray") is not None and importlib.util.find_spec("pandas") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason='ray[data] is not installed (pip install "bnwvad[ray]")')
LAUNCH = ("import sys; from bnwvad._extras import launch; "
          "sys.exit(launch('bnwvad-infer', 'bnwvad.runtime.cli'))")
LENGTHS = [5, 40, 33, 100, 7, 64, 12, 80, 4, 50, 21, 90]
THRESHOLD = 0.8
RUN_TIMEOUT_S = 240


def infer(*args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LAUNCH, *map(str, args)], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, env={**os.environ, **(env or {})}, **kw)


@pytest.fixture(scope="module")
def feats(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ray_feats")
    rng = np.random.default_rng(7)
    for i, t in enumerate(LENGTHS):
        np.save(d / f"v{i:02d}.npy", rng.normal(size=(t, TOY_CROPS, TOY_D)).astype(np.float32))
    np.save(d / "broken.npy", np.full((10, TOY_CROPS, TOY_D), np.nan, np.float32))
    return d


@pytest.fixture(scope="module")
def reference(feats, toy_onnx, tmp_path_factory) -> Path:
    """The single-process run of the same inputs."""
    out = tmp_path_factory.mktemp("ray_ref") / "out"
    proc = infer(feats, "--model", toy_onnx, "--out", out, "--threshold", THRESHOLD, "-q")
    assert proc.returncode == 1, proc.stderr
    return out


def assert_same_results(out: Path, ref: Path, parts: bool = True) -> None:
    a, b = load_results(out / "results.npz"), load_results(ref / "results.npz")
    assert list(a) == list(b) and len(a) == len(LENGTHS)
    for name in a:
        for k in ("score", "dfm", "anomaly"):
            np.testing.assert_allclose(a[name][k], b[name][k], rtol=0, atol=1e-6)
        np.testing.assert_allclose(np.load(out / f"{name}.npy"), np.load(ref / f"{name}.npy"), rtol=0, atol=1e-6)
    ev, ev_ref = json.loads((out / "events.json").read_text()), json.loads((ref / "events.json").read_text())
    assert ev["threshold"] == ev_ref["threshold"]
    assert {n: len(e) for n, e in ev["videos"].items()} == {n: len(e) for n, e in ev_ref["videos"].items()}
    s, s_ref = (json.loads((d / "summary.json").read_text()) for d in (out, ref))
    assert s["failures"] == s_ref["failures"] and "broken" in s["failures"]
    assert s["status"] == "complete" and s["not_scored"] == []
    assert list(s["videos"]) == list(s_ref["videos"])
    for name, v in s["videos"].items():
        assert v["files"] == [f"{name}.npy", f"{PARTS}/{name}.npz", f"{PARTS}/{name}.json"][:3 if parts else 1]
        assert {k: v[k] for k in ("snippets", "crops", "events")} == {k: s_ref["videos"][name][k]
                                                                      for k in ("snippets", "crops", "events")}
    # Every file in the folder is listed (a later run can replace or remove exactly them).
    present = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert present == set(s["files"])


# -- records and options (no cluster) ------------------------------------------------------------
def test_parse_address():
    assert parse_address("local") is None and parse_address("") is None
    assert parse_address("auto") == "auto" and parse_address("10.0.0.1:6379") == "10.0.0.1:6379"
    assert parse_address("ray://head:10001") == "ray://head:10001"
    with pytest.raises(ValueError, match=r"--ray 'feats/': not a Ray address.*--ray=ADDRESS"):
        parse_address("feats/")


def test_batch_size_for():
    assert batch_size_for(1000, 2, 32) == 32           # the Scorer's max batch
    assert batch_size_for(12, 2, 32) == 2              # every actor gets several batches
    assert batch_size_for(1, 4, 32) == 1


def test_part_record_valid_only_for_same_model_settings_and_sources(tmp_path):
    from bnwvad.runtime.inputs import FileVideo

    src = tmp_path / "a.npy"
    np.save(src, np.zeros((4, TOY_CROPS, TOY_D), np.float32))
    desc = describe(FileVideo("a", [src], "TCD", TOY_CROPS, 4, TOY_D))
    key = run_key(ModelIdentity("sha256:w", "weights (model metadata)", "fp32"), None, 0, 1)
    r = VideoResult("a", *(np.arange(4, dtype=np.float32) + k for k in range(3)), crops=TOY_CROPS)
    out = tmp_path / "out"
    write_part(out, r, source_identity(desc["paths"]), key)
    got = read_part(out, desc, key)
    assert got is not None and got.crops == TOY_CROPS
    np.testing.assert_array_equal(got.dfm, r.dfm)
    np.testing.assert_array_equal(np.load(out / "a.npy"), r.anomaly)
    other_model = run_key(ModelIdentity("sha256:w", "weights (model metadata)", "fp16"), None, 0, 1)
    assert read_part(out, desc, other_model) is None
    assert read_part(out, desc, run_key(ModelIdentity("sha256:w", "x", "fp32"), 16, 0, 1)) is None
    os.utime(src, ns=(1, 1))                            # the source changed: scored again
    assert read_part(out, desc, key) is None
    write_part(out, r, source_identity(desc["paths"]), key)
    assert read_part(out, desc, key) is not None
    (out / "a.npy").unlink()                            # an output gone: scored again
    assert read_part(out, desc, key) is None
    write_part(out, r, source_identity(desc["paths"]), key)
    (out / PARTS / "a.json").write_text("{")            # a torn record (never written so; still safe)
    assert read_part(out, desc, key) is None


def test_without_ray(feats, toy_onnx, tmp_path):
    """With ray (and torch) unimportable, bnwvad-infer scores as before (nothing imports ray
    without --ray); --ray names the extra to install and exits 2, the output folder untouched."""
    hide = ("import sys; sys.modules['ray'] = sys.modules['torch'] = None; "
            "import bnwvad.runtime.ray_batch, bnwvad.runtime.outputs, bnwvad.client; " + LAUNCH)
    plain = subprocess.run([sys.executable, "-c", hide, str(feats), "--model", str(toy_onnx), "--out",
                            str(tmp_path / "plain"), "-q"], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 1 and "broken.npy" in plain.stderr, plain.stderr
    assert len(load_results(tmp_path / "plain" / "results.npz")) == len(LENGTHS)
    proc = subprocess.run([sys.executable, "-c", hide, str(feats), "--model", str(toy_onnx), "--out",
                           str(tmp_path / "o"), "--ray"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert 'bnwvad-infer --ray needs' in proc.stderr and 'pip install "bnwvad[ray]"' in proc.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_usage_errors(feats, toy_onnx, tmp_path):
    proc = infer("--model", toy_onnx, "--out", tmp_path / "o", "--ray", feats, feats / "v00.npy")
    assert proc.returncode == 2 and "not a Ray address" in proc.stderr
    proc = infer(feats, "--model", toy_onnx, "--out", tmp_path / "o", "--plot", "--ray")
    assert proc.returncode == 2 and "--plot is not supported" in proc.stderr


# -- on a cluster -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster (2 CPUs) the command lines join by address."""
    if not HAVE_RAY:
        pytest.skip('ray[data] is not installed (pip install "bnwvad[ray]")')
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 << 20)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@needs_ray
@pytest.mark.slow
def test_other_model_refused_before_any_work(feats, toy_onnx, reference, tmp_path):
    """The folder rules hold with --ray: another model's folder needs --overwrite (checked before
    the cluster starts)."""
    from _toy_onnx import build_toy_onnx, toy_metadata

    other = build_toy_onnx(tmp_path / "other.onnx", metadata=toy_metadata(weights_digest="sha256:other"))
    proc = infer(feats, "--model", other, "--out", reference, "--ray")
    assert proc.returncode == 2 and "holds the outputs of another model" in proc.stderr


@needs_ray
@pytest.mark.slow
def test_joined_cluster_equals_single_process(cluster, feats, toy_onnx, reference, tmp_path):
    out = tmp_path / "out"
    proc = infer(feats, "--model", toy_onnx, "--out", out, "--threshold", THRESHOLD, "--actors", "2",
                 "--cpus-per-actor", "1", f"--ray={cluster}")
    assert proc.returncode == 1, proc.stderr                 # broken.npy, named
    assert "FAILED" in proc.stderr and "broken.npy: contains NaN" in proc.stderr
    assert_same_results(out, reference)
    # Run again: everything is done; nothing is scored, the same files are assembled.
    before = {p: p.stat().st_mtime_ns for p in (out / PARTS).iterdir()}
    again = infer(feats, "--model", toy_onnx, "--out", out, "--threshold", THRESHOLD, f"--ray={cluster}")
    assert again.returncode == 1, again.stderr
    assert f"{len(LENGTHS)} of {len(LENGTHS) + 1} video(s) already scored" in again.stderr   # + broken
    assert {p: p.stat().st_mtime_ns for p in (out / PARTS).iterdir()} == before
    assert_same_results(out, reference)


@needs_ray
@pytest.mark.slow
def test_actor_dies_mid_job_on_a_local_cluster(feats, toy_onnx, reference, tmp_path):
    """The command's own local cluster; one actor exits after 2 videos: Ray Data restarts it and
    retries its batch, which skips what was finished. Results as without the fault."""
    out, marker = tmp_path / "out", tmp_path / "died"
    proc = infer(feats, "--model", toy_onnx, "--out", out, "--threshold", THRESHOLD, "--actors", "2",
                 "--batch-size", "2", "-q", "--ray", env={"BNWVAD_RAY_TEST_DIE_AFTER": f"2:{marker}"})
    assert marker.exists(), "the fault was not injected"
    assert proc.returncode == 1, proc.stderr
    assert_same_results(out, reference)


def run_until(cmd: list[str], out: Path, parts: int, sig: int) -> subprocess.Popen:
    """Start the command (slowed down by the test hook), send `sig` to its process group once
    `parts` videos are finished, and wait for it."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "BNWVAD_RAY_TEST_SLEEP_S": "1.0"})
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while len(list((out / PARTS).glob("*.json"))) < parts:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no video finished in time"
            time.sleep(0.1)
        os.killpg(proc.pid, sig) if sig == signal.SIGKILL else proc.send_signal(sig)
        proc.wait(timeout=RUN_TIMEOUT_S)
        proc.err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()
    return proc


@needs_ray
@pytest.mark.slow
def test_driver_interrupted_killed_then_resumed(cluster, feats, toy_onnx, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", LAUNCH, str(feats), "--model", str(toy_onnx), "--out", str(out),
           "--threshold", str(THRESHOLD), "--batch-size", "1", "-q", f"--ray={cluster}"]
    # SIGTERM: the finished videos are assembled, summary.json says interrupted, exit 130.
    proc = run_until(cmd, out, 2, signal.SIGTERM)
    assert proc.returncode == 130, proc.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["interrupted"] and summary["signal"] == "SIGTERM"
    finished = set(summary["videos"])
    assert len(finished) >= 2 and set(load_results(out / "results.npz")) == finished
    assert len(summary["not_scored"]) + len(finished) + len(summary["failures"]) == len(LENGTHS) + 1
    # SIGKILL: nothing after the commit runs; the records written so far stay.
    proc = run_until(cmd, out, len(finished) + 2, signal.SIGKILL)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "running"
    done = {p: p.stat().st_mtime_ns for p in (out / PARTS).glob("*.json")}
    assert len(finished) + 2 <= len(done) < len(LENGTHS)
    # Every file the killed run wrote is listed in its summary (a later run can remove them), but
    # for temporary files a write cut short may leave (the next run removes them).
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.suffix != ".tmp"}
    assert written <= set(summary["files"])
    again = infer(feats, "--model", toy_onnx, "--out", out, "--threshold", THRESHOLD, f"--ray={cluster}")
    assert again.returncode == 1, again.stderr
    assert f"{len(done)} of {len(LENGTHS) + 1} video(s) already scored" in again.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())   # not scored again
    assert_same_results(out, reference)


@needs_ray
@pytest.mark.slow
def test_server_equals_single_process(cluster, feats, toy_onnx, reference, tmp_path):
    """bnwvad-infer --server URL: every video through bnwvad-serve's HTTP route (deployed on the
    module's cluster), the same outputs as the single-process run; the folder is the server
    model's (a local run of the same model may replace it, another model's is refused)."""
    import socket

    from ray import serve

    from bnwvad.runtime.serve import ServeConfig, deploy

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = deploy(ServeConfig(model=str(toy_onnx), backend="ort-cpu", threads=1, replica_cpus=1.0),
                 host="127.0.0.1", port=port)
    try:
        out = tmp_path / "out"
        proc = infer(feats, "--server", url, "--out", out, "--threshold", THRESHOLD)
        assert proc.returncode == 1, proc.stderr
        assert "broken.npy: contains NaN" in proc.stderr
        assert_same_results(out, reference, parts=False)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["model"]["path"] == url and summary["model"]["weights_digest"] == "sha256:toyw"
        assert summary["calls"] == len(LENGTHS)                   # one request per video
        both = infer(feats, "--server", url, "--model", toy_onnx, "--out", tmp_path / "o2")
        assert both.returncode == 2 and "not both" in both.stderr
    finally:
        serve.shutdown()
    gone = infer(feats, "--server", url, "--out", tmp_path / "o3")
    assert gone.returncode == 2 and f"--server {url}" in gone.stderr and "cannot reach" in gone.stderr
