"""The training loop and bnwvad-train: end to end, checkpoints, log, resume, NaN stop."""
import json
import os
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import bnwvad.train as train_mod
from bnwvad import ModelConfig, TrainConfig, load_model
from bnwvad.checkpoint import read_checkpoint
from bnwvad.cli.train import main
from bnwvad.data import LoaderConfig
from bnwvad.demo import DemoSpec, generate_demo
from bnwvad.train import (DataSpec, NonFiniteLossError, RunConfig, TrainingError, TrainingInterrupted,
                          train)

SPEC = DemoSpec(feature_dim=48, crops=2, train_normal=8, train_abnormal=8, test_normal=3,
                test_abnormal=5, train_length=(16, 50), test_length=(16, 60))
TINY_MODEL = dict(embed_dim=16, heads=2, head_dim=8, mlp_dim=16, hidden_dims=(8, 4))
TINY_ARGS = ["--embed-dim", "16", "--heads", "2", "--head-dim", "8", "--mlp-dim", "16",
             "--hidden-dims", "8,4", "--batch-size", "4", "--segments", "16"]
CLI = [str(Path(sys.executable).parent / "bnwvad-train")]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP's
    thread hand-offs cost more than the work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return generate_demo(tmp_path_factory.mktemp("demo") / "demo_data", spec=SPEC)


def configs(root, out, iterations=6, eval_every=3, **run_kw):
    model = ModelConfig(feature_dim=48, **TINY_MODEL)
    recipe = TrainConfig(batch_size=4, segments=16, iterations=iterations, eval_every=eval_every, seed=3)
    data = DataSpec("demo", root / "list/XD_Train.list", root, root / "list/XD_Test.list",
                    root / "XD_Annotation.txt")
    run = RunConfig(out, device="cpu", progress=False, log_every=2,
                    loader=run_kw.pop("loader", LoaderConfig(workers=1)), **run_kw)
    return model, recipe, data, run


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_cli_end_to_end_on_a_tiny_demo_set(demo_root, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(CLI + ["--dataset", "demo", "--root", str(demo_root), "--out", str(out),
                                 "--iterations", "4", "--eval-every", "2", "--log-every", "2", "--no-progress", *TINY_ARGS],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "demo dataset:" in proc.stdout and "reused" in proc.stdout
    assert f"run folder: {out}" in proc.stdout
    assert "final model (step 4" in proc.stdout and "AUC" in proc.stdout and "AP" in proc.stdout
    assert "selected on the test split" in proc.stdout

    # Checkpoints: our format, weights_only-loadable, with what resume needs.
    last = read_checkpoint(out / "last.pt")
    assert last["format"] == "bnwvad-checkpoint" and last["meta"]["step"] == 4
    assert 0 <= last["meta"]["metrics"]["auc"] <= 1 and "selection_note" in last["meta"]
    ts = last["train_state"]
    assert ts["step"] == 4 and ts["optimizer"]["state"] and isinstance(ts["rng"]["torch"], torch.Tensor)
    assert ts["sampler"]["normal"]["batches_per_epoch"] == 4 and ts["best"]["metric"] == "ap"
    best = read_checkpoint(out / "best.pt")
    assert "train_state" not in best and best["meta"]["step"] in (2, 4)
    model = load_model(out / "best.pt")
    assert model.config.embed_dim == 16 and model.config.feature_dim == 48

    # The JSON-lines log: a start record, training records, evaluations, done.
    recs = records(out)
    events = [r["event"] for r in recs]
    assert events[0] == "start" and events[-1] == "done"
    assert "test split" in recs[0]["note"].lower()
    evals = [r for r in recs if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4] and all("ap" in r and "auc" in r for r in evals)
    assert [r["step"] for r in recs if r["event"] == "train"] == [2, 4]
    assert json.loads((out / "run.json").read_text())["model"]["embed_dim"] == 16

    # In-process from here (no interpreter start): the same folder again without --resume
    # is refused in one line (nothing ran: exit 2); --resume takes the settings from
    # run.json and refuses recipe changes; --iterations may grow.
    runner = CliRunner()
    again = runner.invoke(main, ["--dataset", "demo", "--root", str(demo_root), "--out", str(out),
                                 "--no-progress", *TINY_ARGS])
    assert again.exit_code == 2 and "already holds a run" in again.output
    lines = again.output.strip().splitlines()
    assert lines[-1].startswith("Error:") and sum("Error" in line for line in lines) == 1
    bad = runner.invoke(main, ["--resume", "--out", str(out), "--lr", "1"])
    assert bad.exit_code == 2 and "--lr cannot be changed" in bad.output
    more = runner.invoke(main, ["--resume", "--out", str(out), "--iterations", "6", "--no-progress"])
    assert more.exit_code == 0, more.output
    assert read_checkpoint(out / "last.pt")["meta"]["step"] == 6
    assert [r["event"] for r in records(out)][-3:] == ["train", "eval", "done"]


def test_cli_bad_input_is_one_clear_line(tmp_path):
    proc = CliRunner().invoke(main, ["--dataset", "xd", "--root", str(tmp_path), "--no-progress",
                                     "-o", str(tmp_path / "run")])
    assert proc.exit_code == 2                   # nothing could run
    assert proc.output.startswith("Error:") and len(proc.output.strip().splitlines()) == 1
    assert str(tmp_path) in proc.output
    assert "run folder" not in proc.output and not (tmp_path / "run").exists()


def test_resume_continues_exactly(demo_root, tmp_path):
    full = train(*configs(demo_root, tmp_path / "full", iterations=6))
    part = train(*configs(demo_root, tmp_path / "part", iterations=3))
    assert part.step == 3
    resumed = train(*configs(demo_root, tmp_path / "part", iterations=6, resume=True,
                             loader=LoaderConfig(workers=2, prefetch=3)))
    a, b = read_checkpoint(full.last_checkpoint), read_checkpoint(resumed.last_checkpoint)
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    sa, sb = a["train_state"]["optimizer"]["state"], b["train_state"]["optimizer"]["state"]
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)
    assert resumed.final_metrics == full.final_metrics
    # The losses logged before and after the resume point equal the uninterrupted run's.
    def losses(out):
        return {r["step"]: r["loss"] for r in records(out) if r["event"] == "train"}

    full_losses, part_losses = losses(tmp_path / "full"), losses(tmp_path / "part")
    assert set(full_losses) == {2, 4, 6} and set(part_losses) == {2, 3, 4, 6}
    assert all(part_losses[k] == v for k, v in full_losses.items())


def test_same_seed_same_result_and_a_changed_recipe_cannot_resume(demo_root, tmp_path):
    a = train(*configs(demo_root, tmp_path / "a", iterations=2, eval_every=2))
    b = train(*configs(demo_root, tmp_path / "b", iterations=2, eval_every=2, loader=LoaderConfig(workers=0)))
    sa, sb = (read_checkpoint(r.last_checkpoint)["state_dict"] for r in (a, b))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    model, recipe, data, run = configs(demo_root, tmp_path / "a", iterations=4, resume=True)
    recipe.lr = 1e-3
    with pytest.raises(TrainingError, match=r"recipe differs.*lr: 0\.0001 -> 0\.001"):
        train(model, recipe, data, run)
    with pytest.raises(TrainingError, match="already holds a run"):
        train(*configs(demo_root, tmp_path / "a", iterations=4))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(demo_root, tmp_path, monkeypatch):
    real = train_mod.train_step
    calls = []

    def poisoned(model, opt, normal, abnormal, clip):
        calls.append(1)
        out = real(model, opt, normal, abnormal, clip)
        if len(calls) == 5:
            out["total"] = float("nan")
            with torch.no_grad():                 # as a real NaN step would: weights ruined
                for p in model.parameters():
                    p.fill_(float("nan"))
        return out

    monkeypatch.setattr(train_mod, "train_step", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"step 5: non-finite training loss \(total=nan.*last.pt "
                                                 r"holds the last good state \(step 3\)"):
        train(*configs(demo_root, out, iterations=8, eval_every=3))
    last = read_checkpoint(out / "last.pt")
    assert last["meta"]["step"] == 3
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert records(out)[-1]["event"] == "stopped"
    load_model(out / "best.pt")                  # best.pt untouched and loadable


def test_ctrl_c_saves_last_and_resumes(demo_root, tmp_path, monkeypatch):
    @contextmanager
    def pressed_once():
        ev = threading.Event()
        ev.set()                                  # as if Ctrl-C came during the first step
        yield ev

    monkeypatch.setattr(train_mod, "_stop_on_sigint", pressed_once)
    out = tmp_path / "int"
    with pytest.raises(TrainingInterrupted, match="interrupted at step 1.*--resume"):
        train(*configs(demo_root, out, iterations=4, eval_every=4))
    assert read_checkpoint(out / "last.pt")["train_state"]["step"] == 1
    monkeypatch.undo()
    done = train(*configs(demo_root, out, iterations=4, eval_every=4, resume=True))
    assert done.step == 4 and done.best_step == 4


def test_feature_dim_mismatch_is_named(demo_root, tmp_path):
    model, recipe, data, run = configs(demo_root, tmp_path / "d")
    model = ModelConfig(feature_dim=1024, **TINY_MODEL)
    with pytest.raises(TrainingError, match=r"__0\.npy: the training features have D = 48 but the model "
                                            r"expects feature_dim = 1024"):
        train(model, recipe, data, run)
    assert not (tmp_path / "d").exists()          # nothing written for a run that cannot start


@pytest.mark.slow
def test_cli_without_arguments_runs_the_demo(tmp_path):
    env = dict(os.environ)
    proc = subprocess.run(CLI + ["--iterations", "20", "--eval-every", "20", "--no-progress"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "demo_data" / "demo_manifest.json").is_file()
    assert "final model" in proc.stdout
    shutil.rmtree(tmp_path / "demo_data")


def test_xd_with_audio_through_the_cli(tmp_path):
    """XD-Violence layout + VGGish audio: D = 1024 + 128, through training and evaluation."""
    import numpy as np

    rng = np.random.default_rng(0)
    root, audio = tmp_path / "xd", tmp_path / "vggish"
    train_names = [f"m{i}__#1_label_{'A' if i % 2 else 'B1-0-0'}" for i in range(6)]
    test_names = ["t0__#1_label_G-0-0", "t1__#1_label_A"]
    lines = {"train": [], "test": []}
    for split, names in (("train", train_names), ("test", test_names)):
        for name in names:
            t = int(rng.integers(6, 20))
            (root / split).mkdir(parents=True, exist_ok=True)
            (audio / split).mkdir(parents=True, exist_ok=True)
            for k in range(2):
                np.save(root / split / f"{name}__{k}.npy", rng.random((t, 1024), dtype=np.float32))
                lines[split].append(f"{split}/{name}__{k}.npy")
            np.save(audio / split / f"{name}__vggish.npy", rng.random((t, 128), dtype=np.float32))
    (root / "list").mkdir()
    (root / "list" / "XD_Train.list").write_text("\n".join(lines["train"]))
    (root / "list" / "XD_Test.list").write_text("\n".join(lines["test"]))
    (root / "XD_Annotation.txt").write_text(f"{test_names[0]} 16 64\n")
    out = tmp_path / "run"

    def args(out):
        return ["--dataset", "xd", "--root", str(root), "--audio-root", str(audio), "--out", str(out),
                "--iterations", "2", "--eval-every", "2", "--no-progress", *TINY_ARGS[:-4],
                "--batch-size", "2", "--segments", "8"]

    res = CliRunner().invoke(main, args(out))
    assert res.exit_code == 0, res.output
    ck = read_checkpoint(out / "last.pt")
    assert ck["config"]["feature_dim"] == 1152 and ck["preset"] == "xd"
    assert ck["meta"]["metrics"]["auc"] is not None
    # A missing audio file is named, with where it was looked for.
    (audio / "test" / f"{test_names[1]}__vggish.npy").unlink()
    res = CliRunner().invoke(main, args(tmp_path / "run2"))
    assert res.exit_code == 2 and f"{test_names[1]}__vggish.npy" in res.output and "no audio features" in res.output
    assert not (tmp_path / "run2").exists()


# -- run folders: resume from anywhere, moved and copied folders (issue #10) --------------------
def cli_train(args, cwd=None):
    """bnwvad-train in-process (CliRunner), optionally from another working directory."""
    old = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        return CliRunner().invoke(main, [str(a) for a in args])
    finally:
        os.chdir(old)


def tiny_run(demo_root, out, cwd, iterations=2):
    """A tiny demo run started from `cwd` with paths relative to it (as a person types them)."""
    root = os.path.relpath(demo_root, cwd)
    res = cli_train(["--dataset", "demo", "--root", root, "--out", os.path.relpath(out, cwd),
                     "--iterations", iterations, "--eval-every", 2, "--log-every", 1, "--no-progress",
                     *TINY_ARGS], cwd=cwd)
    assert res.exit_code == 0, res.output
    return json.loads((out / "run.json").read_text())


def tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_run_json_paths_are_relative_to_the_run_folder(demo_root, tmp_path):
    (tmp_path / "work").mkdir()
    saved = tiny_run(demo_root, tmp_path / "work" / "runs" / "a", tmp_path / "work")
    assert saved["format"] == "bnwvad-run" and len(saved["run_id"]) == 16
    assert "out_dir" not in saved["run"]
    # Relative to the run folder, not to the working directory the run was started from.
    assert (tmp_path / "work" / "runs" / "a" / saved["data"]["train_list"]).resolve() == \
        (demo_root / "list" / "XD_Train.list").resolve()
    assert Path(saved["data_absolute"]["train_list"]).is_absolute()
    out = tmp_path / "work" / "runs" / "a"
    ck = read_checkpoint(out / "last.pt")
    assert ck["train_state"]["run_id"] == ck["meta"]["run_id"] == saved["run_id"]
    assert {r["run_id"] for r in records(out)} == {saved["run_id"]}


def test_resume_from_another_directory_after_the_folder_moved(demo_root, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = tiny_run(demo_root, tmp_path / "a" / "runs" / "r", tmp_path / "a")
    moved = tmp_path / "archive" / "r"
    moved.parent.mkdir()
    os.rename(tmp_path / "a" / "runs" / "r", moved)
    # From a third working directory, with the folder somewhere else than run.json recorded.
    res = cli_train(["--resume", "--out", moved, "--iterations", 4, "--no-progress"], cwd=tmp_path / "b")
    assert res.exit_code == 0, res.output
    assert f"resuming run {first['run_id']} at step 2 in {moved}" in res.output
    assert "was moved from" in res.output
    assert read_checkpoint(moved / "last.pt")["meta"]["step"] == 4
    after = json.loads((moved / "run.json").read_text())
    assert after["run_id"] == first["run_id"] and after["folder"]["path"] == os.path.realpath(moved)
    resume = [r for r in records(moved) if r["event"] == "resume"]
    assert resume[0]["relation"] == "moved" and resume[0]["run_id"] == first["run_id"]
    assert not (tmp_path / "a" / "runs" / "r").exists()         # nothing written where it was
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == []


def test_a_copied_folder_resumes_as_its_own_run_and_never_touches_the_original(demo_root, tmp_path):
    orig = tmp_path / "runs" / "orig"
    first = tiny_run(demo_root, orig, tmp_path)
    copy = tmp_path / "runs" / "copy"
    shutil.copytree(orig, copy)
    before = tree(orig)
    res = cli_train(["--resume", "-o", copy, "--iterations", 4, "--no-progress"], cwd=tmp_path)
    assert res.exit_code == 0, res.output
    assert tree(orig) == before                                  # the original: not one byte changed
    assert "is a copy of run" in res.output and "the original is not touched" in res.output
    after = json.loads((copy / "run.json").read_text())
    assert after["run_id"] != first["run_id"]
    assert after["forked_from"] == {"run_id": first["run_id"], "folder": os.path.realpath(orig), "step": 2}
    ck = read_checkpoint(copy / "last.pt")
    assert ck["meta"]["step"] == 4 and ck["train_state"]["run_id"] == after["run_id"]
    ids = [r["run_id"] for r in records(copy)]
    assert ids[0] == first["run_id"] and ids[-1] == after["run_id"]    # the history, then the fork
    # The copy resumes as itself from now on; the original still resumes as the original.
    res = cli_train(["--resume", "-o", copy, "--iterations", 6, "--no-progress"], cwd=tmp_path)
    assert res.exit_code == 0 and "is a copy" not in res.output, res.output
    assert json.loads((copy / "run.json").read_text())["run_id"] == after["run_id"]
    res = cli_train(["--resume", "-o", orig, "--iterations", 4, "--no-progress"], cwd=tmp_path)
    assert res.exit_code == 0 and "is a copy" not in res.output, res.output
    assert json.loads((orig / "run.json").read_text())["run_id"] == first["run_id"]


def test_a_last_pt_of_another_run_is_refused(demo_root, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    tiny_run(demo_root, a, tmp_path)
    tiny_run(demo_root, b, tmp_path)
    shutil.copy(b / "last.pt", a / "last.pt")
    res = cli_train(["--resume", "--out", a, "--iterations", 4, "--no-progress"])
    assert res.exit_code == 2 and "belongs to run" in res.output and "mixes two runs" in res.output


def test_resume_of_a_folder_without_a_run_says_so(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = cli_train(["--resume", "--out", empty])
    assert res.exit_code == 2
    assert res.output.strip() == f"Error: {empty} holds no bnwvad-train run (no run.json)"
    # Extra flags are not blamed when there is no run to resume.
    res = cli_train(["--resume", "--out", empty, "--lr", "1", "--dataset", "xd"])
    assert res.exit_code == 2 and "holds no bnwvad-train run (no run.json)" in res.output
    assert "cannot be changed" not in res.output
    res = cli_train(["--resume", "--out", tmp_path / "nowhere"])
    assert res.exit_code == 2 and "holds no bnwvad-train run (no such folder)" in res.output
    assert not (tmp_path / "nowhere").exists()


def test_a_run_of_an_older_version_resumes_and_is_upgraded(demo_root, tmp_path, monkeypatch):
    """run.json v1 (paths relative to the working directory, out_dir stored, no run id) and a
    last.pt with the path-based sample fingerprint still resume from the same directory."""
    from bnwvad.checkpoint import atomic_save
    from bnwvad.data import legacy_fingerprint, load_train_samples

    out = tmp_path / "old"
    saved = tiny_run(demo_root, out, tmp_path)
    root = os.path.relpath(demo_root, tmp_path)
    v1 = {k: saved[k] for k in ("model", "train", "bnwvad_version")}
    v1["data"] = {**saved["data"], "train_list": f"{root}/list/XD_Train.list", "root": root,
                  "test_list": f"{root}/list/XD_Test.list", "annotations": f"{root}/XD_Annotation.txt",
                  "snippets": f"{root}/test_snippets.csv"}
    v1["run"] = {**saved["run"], "out_dir": "old", "resume": False}
    (out / "run.json").write_text(json.dumps(v1))
    ck = read_checkpoint(out / "last.pt")
    monkeypatch.chdir(tmp_path)
    normal, abnormal = load_train_samples(Path(root) / "list/XD_Train.list", Path(root))
    ck["train_state"]["fingerprints"] = {"normal": legacy_fingerprint(normal),
                                         "abnormal": legacy_fingerprint(abnormal)}
    del ck["train_state"]["run_id"], ck["meta"]["run_id"]
    atomic_save(ck, out / "last.pt")
    res = CliRunner().invoke(main, ["--resume", "--out", "old", "--iterations", "4", "--no-progress"])
    assert res.exit_code == 0, res.output
    now = json.loads((out / "run.json").read_text())
    assert now["format"] == "bnwvad-run" and now["run_id"] and now["data"]["root"] == os.path.join("..", root)


# -- every file is checked before step 0 ------------------------------------------------------
def xd_tree(root, n_train=8, n_test=4, crops=2, dim=1024, seed=0):
    """A tiny XD-Violence tree (D = 1024, as the xd preset expects)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lines = {"train": [], "test": []}
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            name = f"{split}{i}__#1_label_{'A' if i % 2 else 'B1-0-0'}"
            t = int(rng.integers(6, 20))
            for k in range(crops):
                np.save(root / split / f"{name}__{k}.npy", rng.random((t, dim), dtype=np.float32))
                lines[split].append(f"{split}/{name}__{k}.npy")
    (root / "list").mkdir(exist_ok=True)
    (root / "list" / "XD_Train.list").write_text("\n".join(lines["train"]))
    (root / "list" / "XD_Test.list").write_text("\n".join(lines["test"]))
    (root / "XD_Annotation.txt").write_text("test0__#1_label_B1-0-0 16 64\n")
    return lines["train"], lines["test"]


def test_every_bad_file_is_named_before_anything_runs(tmp_path):
    import numpy as np

    root = tmp_path / "xd"
    train_lines, test_lines = xd_tree(root)
    missing, truncated, wrong_d = root / train_lines[-1], root / train_lines[5], root / train_lines[-4]
    garbage = root / test_lines[-1]
    missing.unlink()                                             # the last file of the list
    truncated.write_bytes(truncated.read_bytes()[:-40])
    np.save(wrong_d, np.ones((20, 7), np.float32))
    garbage.write_bytes(b"not a numpy file at all")
    out = tmp_path / "run"
    res = cli_train(["--dataset", "xd", "--root", root, "--out", out, "--iterations", 2, *TINY_ARGS])
    assert res.exit_code == 2, res.output
    n_files = len(train_lines) + len(test_lines)
    assert f"4 of the {n_files} feature files in the lists cannot be used" in res.output
    for path, why in ((missing, "no such feature file"), (truncated, "truncated"),
                      (wrong_d, "feature dimension D = 7"), (garbage, "not a .npy file")):
        assert f"{path}: {why}" in res.output, (path, res.output)
    assert "checking files" in res.stderr                        # the progress bar of the check
    assert "run folder" not in res.output and not out.exists()   # nothing was written, nor announced


def test_many_bad_files_name_the_first_and_count_the_rest(demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    for line in (root / "list" / "XD_Train.list").read_text().split()[:30]:
        (root / line).unlink()
    model, recipe, data, run = configs(root, tmp_path / "run")
    from bnwvad.data_checks import DataCheckError

    with pytest.raises(DataCheckError) as err:
        train(model, recipe, data, run)
    assert len(err.value.problems) == 30
    msg = str(err.value)
    assert msg.count("no such feature file") == 20 and "... and 10 more" in msg
    assert not (tmp_path / "run").exists()


# -- the demo preset and the crop count in checkpoints ---------------------------------------
def test_demo_preset_matches_the_demo_set_and_recipe():
    from bnwvad import PRESETS
    from bnwvad.demo import DEMO_MODEL, DemoSpec

    p = PRESETS["demo"]
    assert (p.crops, p.feature_dim) == (DemoSpec().crops, DemoSpec().feature_dim) == (5, 128)
    cfg = p.model_config()
    assert all(getattr(cfg, k) == v for k, v in DEMO_MODEL.items())


def test_demo_checkpoints_carry_preset_and_crops_and_exports_record_them(tmp_path):
    from bnwvad.checkpoint import checkpoint_info

    root = generate_demo(tmp_path / "demo_std", spec=DemoSpec(
        train_normal=4, train_abnormal=4, test_normal=2, test_abnormal=2,
        train_length=(16, 30), test_length=(16, 30)))               # the standard 5 crops, D = 128
    out = tmp_path / "run"
    res = cli_train(["--dataset", "demo", "--root", root, "--out", out, "--iterations", 2, "--eval-every", 2,
                     "--no-progress", *TINY_ARGS])
    assert res.exit_code == 0, res.output
    info = checkpoint_info(out / "best.pt")
    assert (info["preset"], info["crops"]) == ("demo", 5)
    assert read_checkpoint(out / "last.pt")["crops"] == 5
    export = pytest.importorskip("bnwvad.export")
    rep = export.export_onnx(out / "best.pt", tmp_path / "m.onnx", verify=False)
    assert (rep.metadata["preset"], rep.metadata["crops"]) == ("demo", 5)


def test_other_data_records_its_own_crop_count(demo_root, tmp_path):
    res = train(*configs(demo_root, tmp_path / "r", iterations=1, eval_every=1))
    ck = read_checkpoint(res.last_checkpoint)
    assert res.crops == ck["crops"] == 2 and ck["preset"] is None    # SPEC: 2 crops, not the preset's


# -- the command line ----------------------------------------------------------------------
def test_help_says_out_is_a_folder_and_shows_no_text_paths():
    res = CliRunner().invoke(main, ["--help"], terminal_width=200)
    assert res.exit_code == 0
    line = next(line for line in res.output.splitlines() if "--out" in line)
    assert line.strip().startswith("-o, --out DIR") and "FOLDER" in line
    for opt in ("--root", "--train-list", "--test-list", "--annotations", "--snippets", "--audio-root",
                "--audio-list", "--out"):
        row = next(line for line in res.output.splitlines() if f"{opt} " in line)
        assert not any(w in row.split() for w in ("TEXT", "PATH", "DIRECTORY")), row


def test_run_paths_resolve_relative_to_the_folder_then_where_they_were(tmp_path):
    from bnwvad.train import RunFolderError

    (tmp_path / "run").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.list").write_text("x")
    spec = DataSpec("custom", tmp_path / "data" / "t.list", tmp_path / "data")
    rel, absolute = spec.relative_to(tmp_path / "run"), spec.absolute()
    assert rel["train_list"] == os.path.join("..", "data", "t.list")
    assert DataSpec.from_run(rel, absolute, tmp_path / "run").train_list == tmp_path / "data" / "t.list"
    # The run folder moved deeper: the relative path misses, the recorded absolute one holds.
    (tmp_path / "deep").mkdir()
    assert DataSpec.from_run(rel, absolute, tmp_path / "deep" / "run").root == tmp_path / "data"
    os.rename(tmp_path / "data", tmp_path / "gone")
    with pytest.raises(RunFolderError, match=r"the run's train list is not there: neither at .*t\.list \(its "
                                             r"path relative to the run folder\) nor at .*where it was"):
        DataSpec.from_run(rel, absolute, tmp_path / "deep" / "run")
    with pytest.raises(RunFolderError, match=r"train list is not there: at .*data/t\.list \(its path relative"):
        DataSpec.from_run(rel, absolute, tmp_path / "run")
