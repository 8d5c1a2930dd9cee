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
    # is refused in one line; --resume takes the settings from run.json and refuses recipe
    # changes; --iterations may grow.
    runner = CliRunner()
    again = runner.invoke(main, ["--dataset", "demo", "--root", str(demo_root), "--out", str(out),
                                 "--no-progress", *TINY_ARGS])
    assert again.exit_code == 1 and "already holds a run" in again.output
    lines = again.output.strip().splitlines()
    assert lines[-1].startswith("Error:") and sum("Error" in line for line in lines) == 1
    bad = runner.invoke(main, ["--resume", "--out", str(out), "--lr", "1"])
    assert bad.exit_code == 2 and "--lr cannot be changed" in bad.output
    more = runner.invoke(main, ["--resume", "--out", str(out), "--iterations", "6", "--no-progress"])
    assert more.exit_code == 0, more.output
    assert read_checkpoint(out / "last.pt")["meta"]["step"] == 6
    assert [r["event"] for r in records(out)][-3:] == ["train", "eval", "done"]


def test_cli_bad_input_is_one_clear_line(tmp_path):
    proc = CliRunner().invoke(main, ["--dataset", "xd", "--root", str(tmp_path), "--no-progress"])
    assert proc.exit_code == 1
    assert proc.output.startswith("Error:") and len(proc.output.strip().splitlines()) == 1
    assert str(tmp_path) in proc.output


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
    assert res.exit_code == 1 and f"{test_names[1]}__vggish.npy" in res.output and "no audio features" in res.output
