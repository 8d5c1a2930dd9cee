"""bnwvad-eval and bnwvad.evaluate on tiny real-layout trees built on disk: per-crop .npy
files with XD-Violence names, a list file, an annotation file and a tiny checkpoint.
The happy paths run the CLI as a subprocess; the many bad-input cases run it in-process
(click's runner) to stay fast, with one subprocess check of the exit status and stderr."""
import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from _helpers import NO_TORCH
from bnwvad import ModelConfig, build_model, save_checkpoint
from bnwvad.annotations import read_annotations
from bnwvad.cli.eval import main
from bnwvad.evaluate import dataset_files, evaluate_model, load_test_set, score_videos
from bnwvad.features import group_videos, read_list
from bnwvad.metrics import evaluate_scores

REPO = Path(__file__).resolve().parents[2]
TINY = ModelConfig(feature_dim=8, embed_dim=16, heads=2, head_dim=8, mlp_dim=16, hidden_dims=(8, 4))
CROPS = 3
# (name, T, events): two violent videos (one with two classes), two normal ones.
VIDEOS = [("Movie.A.2001__#00-01-00_00-02-00_label_B1-0-0", 12, ((16, 80), (150, 170))),
          ("v=abc__#1_label_G-B2-0", 9, ((0, 40),)),
          ("Movie.B.1999__#00-10-00_00-11-00_label_A", 10, ()),
          ("Movie.C.2010__#01-00-00_01-00-30_label_A", 7, ())]
KEYS = {"auc", "ap", "average_precision", "auc_sub", "ap_sub", "frames", "anomalous_frames", "per_class"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """<tmp>/demo_data in the XD-Violence layout the demo generator writes, plus a checkpoint."""
    base = tmp_path_factory.mktemp("eval")
    root = base / "demo_data"
    (root / "test").mkdir(parents=True)
    (root / "list").mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for name, t, _ in VIDEOS:
        for c in range(CROPS):
            np.save(root / "test" / f"{name}__{c}.npy", rng.random((t, TINY.feature_dim), dtype=np.float32))
            lines.append(f"test/{name}__{c}.npy")
    (root / "list" / "XD_Test.list").write_text("\n".join(lines))          # no final newline, as published
    (root / "XD_Annotation.txt").write_text(
        "".join(f"{n} {' '.join(f'{s} {e}' for s, e in ev)}\n" for n, _, ev in VIDEOS if ev))
    torch.manual_seed(0)
    save_checkpoint(base / "tiny.pt", build_model(TINY).eval(), meta={"note": "test"})
    return base


def cli(args, cwd, block_torch=False):
    """Run bnwvad-eval in a fresh interpreter; block_torch makes any `import torch` fail."""
    code = ((NO_TORCH if block_torch else "import sys\n")
            + "from bnwvad.cli.eval import main\nmain(sys.argv[1:], prog_name='bnwvad-eval')\n")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def record_run(d: Path, digest: str = "sha256:test", precision: str = "fp32") -> Path:
    """Make `d` a recorded run, as bnwvad-infer leaves it: a summary.json naming the model and
    listing every score file in it (for score sets written by hand)."""
    files = sorted(p.name for p in d.glob("*.npy"))
    (d / "summary.json").write_text(json.dumps({
        "format": "bnwvad-infer-run", "format_version": 1, "status": "complete", "interrupted": False,
        "model": {"path": "hand.onnx", "weights_digest": digest, "digest_of": "weights (model metadata)",
                  "precision": precision},
        "files": files + ["summary.json"]}))
    return d


def in_process(args, cwd, monkeypatch):
    monkeypatch.chdir(cwd)
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def expected_metrics(tree):
    files = dataset_files("demo", root=tree / "demo_data")
    ts = load_test_set(files)
    from bnwvad import load_model
    model = load_model(tree / "tiny.pt")
    scores = score_videos(model, ts.videos, progress=False)
    return ts, scores, evaluate_scores({k: v.anomaly for k, v in scores.items()}, ts.videos, ts.annotations)


# ---------------------------------------------------------------------------- library
def test_evaluate_model_scores_each_video_as_one_forward_and_restores_mode(tree):
    root = tree / "demo_data"
    videos = group_videos(read_list(root / "list" / "XD_Test.list", root))
    ann = read_annotations(root / "XD_Annotation.txt")
    torch.manual_seed(1)
    model = build_model(TINY).train()
    scores = score_videos(model, videos, progress=False)
    assert model.training                                   # the training loop's mode is kept
    assert list(scores) == [v.name for v in videos]
    from bnwvad.features import load_video
    x = torch.from_numpy(load_video(videos[1]))[None]
    model.eval()
    with torch.no_grad():
        ref = model(x)
    model.train()
    np.testing.assert_array_equal(scores[videos[1].name].anomaly, ref.anomaly[0].numpy())
    np.testing.assert_array_equal(scores[videos[1].name].dfm, ref.dfm[0].numpy())
    bn_before = model.head.bns[0].running_mean.clone()
    m = evaluate_model(model, videos, ann, device="cpu")
    assert torch.equal(model.head.bns[0].running_mean, bn_before)   # eval mode: no BN update
    assert KEYS <= set(m) and m["frames"] == 16 * sum(t for _, t, _ in VIDEOS)
    assert m["anomalous_frames"] == (80 - 16) + (170 - 150) + 40
    assert sorted(m["per_class"]) == ["Explosion", "Fighting", "Shooting"]
    with pytest.raises(ValueError, match=rf"video '{VIDEOS[0][0]}': 12 snippet scores; expected 3"):
        evaluate_model(model, videos, ann, snippets={v.name: 3 for v in videos})


# ---------------------------------------------------------------------------- CLI, subprocess
def test_checkpoint_then_scores_dir_give_the_same_metrics(tree, tmp_path):
    out = tmp_path / "m.json"
    png = tmp_path / "curves.png"
    r = cli(["tiny.pt", "--dataset", "demo", "--device", "cpu", "--json", out, "--plot", png,
             "--no-progress"], cwd=tree)
    assert r.returncode == 0, r.stderr
    assert "published: trapezoid" in r.stdout and "average_precision_score" in r.stdout
    m = json.loads(out.read_text())
    assert KEYS <= set(m)
    assert m["frames"] == 16 * 38 and m["videos"] == 4 and m["abnormal_videos"] == 2
    assert m["checkpoint"] == "tiny.pt" and m["dataset"] == "demo"
    for k in ("auc", "ap", "average_precision", "auc_sub", "ap_sub"):
        assert 0.0 <= m[k] <= 1.0
    ts, scores, ref = expected_metrics(tree)
    for k in ("auc", "ap", "average_precision", "auc_sub", "ap_sub", "average_precision_sub"):
        assert m[k] == pytest.approx(ref[k], abs=1e-12), k
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))

    # The runtime's format: one <video>.npy (T,) per test video; evaluated with torch
    # blocked, which also proves the --scores path never imports it.
    sdir = tmp_path / "scores"
    sdir.mkdir()
    for name, s in scores.items():
        np.save(sdir / f"{name}.npy", s.anomaly)
    record_run(sdir)
    out2 = tmp_path / "s.json"
    r = cli(["--scores", sdir, "--dataset", "demo", "--json", out2, "--plot", tmp_path / "s.png",
             "--videos", VIDEOS[2][0]], cwd=tree, block_torch=True)
    assert r.returncode == 0, r.stderr
    m2 = json.loads(out2.read_text())
    for k in ("auc", "ap", "average_precision", "auc_sub", "ap_sub", "frames", "anomalous_frames",
              "per_class"):
        assert m2[k] == m[k], k
    assert (tmp_path / "s.png").is_file()


def test_bad_input_exits_nonzero_with_one_line_and_no_json(tree, tmp_path):
    sdir = tmp_path / "scores"
    sdir.mkdir()
    for name, t, _ in VIDEOS[:-1]:
        np.save(sdir / f"{name}.npy", np.zeros(t, np.float32))
    record_run(sdir)
    out = tmp_path / "m.json"
    r = cli(["--scores", sdir, "--dataset", "demo", "--json", out], cwd=tree, block_torch=True)
    assert r.returncode != 0
    assert f"no score file for 1 of 4 test videos, first '{VIDEOS[-1][0]}.npy'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


# ---------------------------------------------------------------------------- CLI, in-process
def test_explicit_files_without_dataset(tree, tmp_path, monkeypatch):
    root = tree / "demo_data"
    out = tmp_path / "m.json"
    r = in_process(["--scores", _scores(tmp_path), "--list", root / "list" / "XD_Test.list", "--root", root,
                    "--annotations", root / "XD_Annotation.txt", "--json", out], tmp_path, monkeypatch)
    assert r.exit_code == 0, r.output
    m = json.loads(out.read_text())
    assert m["frames"] == 16 * 38 and m["dataset"] is None and m["units"] == "fractions in [0, 1]"


def _scores(tmp_path, lengths=None, skip=()):
    d = tmp_path / "scores"
    d.mkdir(exist_ok=True)
    for name, t, _ in VIDEOS:
        if name not in skip:
            np.save(d / f"{name}.npy", np.linspace(0, 1, (lengths or {}).get(name, t), dtype=np.float32))
    return record_run(d)


@pytest.mark.parametrize("case, match", [
    ("wrong_length", rf"video '{VIDEOS[1][0]}': 5 snippet scores; expected 9"),
    ("bad_video", r"video 'nope' is not in the test list"),
    ("bad_annotation", r"XD_Annotation.txt:2: 3 frame indices"),
    ("no_source", r"give either a CHECKPOINT or --scores DIR"),
    ("no_list", r"no test list file: give --list or --dataset"),
    ("bad_checkpoint", r"bad.pt: cannot be read as a PyTorch checkpoint"),
    ("no_demo", r"demo_data: no such dataset root directory \(run bnwvad-train"),
    ("bad_feature", r"__0.npy: not a readable .npy array"),
])
def test_bad_inputs_give_clear_errors_and_write_nothing(tree, tmp_path, monkeypatch, case, match):
    root = tree / "demo_data"
    out = tmp_path / "m.json"
    args = ["--dataset", "demo", "--root", root, "--json", out]
    if case == "wrong_length":
        args += ["--scores", _scores(tmp_path, lengths={VIDEOS[1][0]: 5})]
    elif case == "bad_video":
        args += ["--scores", _scores(tmp_path), "--plot", tmp_path / "p.png", "--videos", "nope"]
    elif case == "bad_annotation":
        bad = tmp_path / "XD_Annotation.txt"
        bad.write_text(f"{VIDEOS[0][0]} 0 10\n{VIDEOS[1][0]} 0 10 20\n")
        args += ["--scores", _scores(tmp_path), "--annotations", bad]
    elif case == "no_source":
        pass
    elif case == "no_list":
        args = ["--scores", _scores(tmp_path), "--json", out]
    elif case == "bad_checkpoint":
        good = (tree / "tiny.pt").read_bytes()
        (tmp_path / "bad.pt").write_bytes(good[: len(good) // 2])          # truncated download
        args = [tmp_path / "bad.pt", *args, "--device", "cpu"]
    elif case == "no_demo":
        args = ["--scores", _scores(tmp_path), "--dataset", "demo", "--json", out]
    elif case == "bad_feature":
        copy = tmp_path / "demo_data"
        shutil.copytree(root, copy)
        (copy / "test" / f"{VIDEOS[0][0]}__0.npy").write_bytes(b"\x93NUMPY garbage")
        args = [tree / "tiny.pt", "--dataset", "demo", "--root", copy, "--json", out, "--device", "cpu",
                "--no-progress"]
    r = in_process(args, tmp_path, monkeypatch)
    assert r.exit_code != 0
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert re.search(match, r.output), r.output
    assert len(r.output.strip().splitlines()) == 1 or "Usage:" in r.output
    assert not out.exists() and not (tmp_path / "p.png").exists()


def test_score_videos_takes_another_feature_loader(tree):
    """E.g. a loader that appends audio features: the model sees what the loader returns."""
    root = tree / "demo_data"
    videos = group_videos(read_list(root / "list" / "XD_Test.list", root))[:2]
    model = build_model(TINY)
    calls = []

    def load(video, feature_dim):
        calls.append((video.name, feature_dim))
        return np.ones((2, 5, feature_dim), np.float32)

    out = score_videos(model, videos, progress=False, load=load)
    assert calls == [(v.name, TINY.feature_dim) for v in videos]
    assert all(s.anomaly.shape == (5,) for s in out.values())


def test_scores_on_the_real_ucf_crime_metadata(datasets_dir, tmp_path, monkeypatch):
    """Only the list is named: annotations and test_snippets.csv are found beside it, T is
    checked against the CSV (no features needed), and the totals are the published ones."""
    d = datasets_dir / "ucf-crime"
    with open(d / "test_snippets.csv") as f:
        rows = list(csv.DictReader(f))
    sdir = tmp_path / "scores"
    sdir.mkdir()
    rng = np.random.default_rng(0)
    for r in rows:
        np.save(sdir / f"{r['video']}.npy", rng.random(int(r["snippets"])).astype(np.float32))
    record_run(sdir)
    out = tmp_path / "ucf.json"
    r = in_process(["--scores", sdir, "--dataset", "ucf", "--list", d / "UCF_Test.list", "--json", out],
                   tmp_path, monkeypatch)
    assert r.exit_code == 0, r.output
    m = json.loads(out.read_text())
    assert (m["frames"], m["anomalous_frames"], m["videos"]) == (1_109_680, 84_128, 290)
    assert m["annotations"] == str(d / "UCF_Annotation.txt")
    assert len(m["per_class"]) == 13 and abs(m["auc"] - 0.5) < 0.02
    bad = rows[5]["video"]
    np.save(sdir / f"{bad}.npy", np.zeros(int(rows[5]["snippets"]) + 1, np.float32))
    r = in_process(["--scores", sdir, "--dataset", "ucf", "--list", d / "UCF_Test.list"], tmp_path, monkeypatch)
    assert r.exit_code != 0
    assert f"video '{bad}': {int(rows[5]['snippets']) + 1} snippet scores; expected {rows[5]['snippets']}" \
        in r.output


def test_evaluate_dataset_glue(tree):
    from bnwvad.evaluate import evaluate_dataset
    root = tree / "demo_data"
    model = build_model(TINY)
    res = evaluate_dataset(model, root / "list" / "XD_Test.list", root / "XD_Annotation.txt", root=root,
                           device="cpu", progress=False)
    assert res.metrics["frames"] == 16 * 38 and [v.name for v in res.test_set.videos] == [n for n, _, _ in VIDEOS]
    assert res.scores[VIDEOS[0][0]].score.shape == (12,)


# ---------------------------------------------------------------------------- scores of one recorded run
def _infer(args, cwd):
    exe = Path(sys.executable).with_name("bnwvad-infer")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "bnwvad.runtime.cli"]
    return subprocess.run([*cmd, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two exported (toy) models that fit the tree's features (D = 8, 3 crops), other weights."""
    from _toy_onnx import build_toy_onnx, toy_metadata

    d = tmp_path_factory.mktemp("models")
    return (build_toy_onnx(d / "a.onnx"),
            build_toy_onnx(d / "b.onnx", metadata=toy_metadata(weights_digest="sha256:other"), seed=1))


def _partial_list(tree, tmp_path, videos):
    lst = tmp_path / f"{videos[0][0]}-{len(videos)}.list"
    lst.write_text("".join(f"test/{n}__{c}.npy\n" for n, _, _ in videos for c in range(CROPS)))
    return lst


def test_scores_of_bnwvad_infer_runs_are_evaluated(tree, models, tmp_path):
    root = tree / "demo_data"
    r = _infer([root / "list" / "XD_Test.list", "--root", root, "--model", models[0], "--out", tmp_path / "a"], tree)
    assert r.returncode == 0, r.stderr
    r = cli(["--scores", tmp_path / "a", "--dataset", "demo", "--json", tmp_path / "m.json"], cwd=tree,
            block_torch=True)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["scores_model"] == {"weights_digest": "sha256:toyw", "precision": "fp32"}
    # A test set scored in two runs of the same model, one folder each: the same metrics.
    lst = _partial_list(tree, tmp_path, VIDEOS[:2])
    rest = _partial_list(tree, tmp_path, VIDEOS[2:])
    for name, part in (("p1", lst), ("p2", rest)):
        assert _infer([part, "--root", root, "--model", models[0], "--out", tmp_path / name], tree).returncode == 0
    r = cli(["--scores", tmp_path / "p1", "--scores", tmp_path / "p2", "--dataset", "demo", "--json",
             tmp_path / "m2.json"], cwd=tree, block_torch=True)
    assert r.returncode == 0, r.stderr
    m2 = json.loads((tmp_path / "m2.json").read_text())
    assert (m2["auc"], m2["ap"]) == (m["auc"], m["ap"]) and len(m2["score_runs"]) == 2


def test_score_files_of_no_recorded_run_are_refused(tree, tmp_path):
    d = _scores(tmp_path)
    (d / "summary.json").unlink()
    out = tmp_path / "m.json"
    r = cli(["--scores", d, "--dataset", "demo", "--json", out], cwd=tree, block_torch=True)
    assert r.returncode == 1
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and f"{d}: no summary.json, so its 4 score file(s) (" in err[0], r.stderr
    assert "come from no recorded bnwvad-infer run" in err[0] and f"{VIDEOS[2][0]}.npy" in err[0]
    assert not out.exists()
    # A summary.json that is not a run record (another program's, an older bnwvad-infer's).
    (d / "summary.json").write_text(json.dumps({"videos": {}}))
    r = cli(["--scores", d, "--dataset", "demo"], cwd=tree, block_torch=True)
    assert r.returncode == 1 and "not a bnwvad-infer run record" in r.stderr


def test_a_score_file_the_run_did_not_write_is_refused(tree, models, tmp_path):
    """The mix the issue describes: a folder whose run wrote some scores, plus a stale file of
    another model's run beside them."""
    root = tree / "demo_data"
    lst = _partial_list(tree, tmp_path, VIDEOS[:-1])
    assert _infer([lst, "--root", root, "--model", models[0], "--out", tmp_path / "a"], tree).returncode == 0
    assert _infer([root / "list" / "XD_Test.list", "--root", root, "--model", models[1],
                   "--out", tmp_path / "b"], tree).returncode == 0
    stale = f"{VIDEOS[-1][0]}.npy"
    shutil.copy(tmp_path / "b" / stale, tmp_path / "a" / stale)
    r = cli(["--scores", tmp_path / "a", "--dataset", "demo", "--json", tmp_path / "m.json"], cwd=tree,
            block_torch=True)
    assert r.returncode == 1
    assert (f"{tmp_path / 'a'}: 1 score file(s) ({stale}) are not listed in its summary.json, so the run it "
            f"records (model sha256:toyw (fp32)) did not write them") in r.stderr
    assert not (tmp_path / "m.json").exists()


def test_scores_of_two_models_are_refused_naming_both(tree, models, tmp_path):
    root = tree / "demo_data"
    for name, part, model in (("p1", _partial_list(tree, tmp_path, VIDEOS[:2]), models[0]),
                              ("p2", _partial_list(tree, tmp_path, VIDEOS[2:]), models[1])):
        r = _infer([part, "--root", root, "--model", model, "--out", tmp_path / name], tree)
        assert r.returncode == 0, r.stderr
    r = cli(["--scores", tmp_path / "p1", "--scores", tmp_path / "p2", "--dataset", "demo"], cwd=tree,
            block_torch=True)
    assert r.returncode == 1
    assert (f"the score folders were written by 2 different models: sha256:toyw (fp32) in {tmp_path / 'p1'}; "
            f"sha256:other (fp32) in {tmp_path / 'p2'}") in r.stderr


def test_an_unwritable_json_path_is_found_before_evaluating(tree, tmp_path):
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "a_file" / "m.json"
    r = cli(["tiny.pt", "--dataset", "demo", "--device", "cpu", "--json", out, "--no-progress"], cwd=tree)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and f"--json {out}: its folder {tmp_path / 'a_file'}: is a file, not a folder" in err[0]
    assert "published: trapezoid" not in r.stdout                      # nothing was evaluated


def test_help_names_files_folders_and_every_exit_status():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0
    assert "--scores DIR" in r.output and "--json FILE" in r.output and "--list FILE" in r.output
    assert "TEXT" not in r.output
    for line in ("0    evaluated", "1    a bad input", "2    nothing could run", "130  interrupted"):
        assert line in r.output
