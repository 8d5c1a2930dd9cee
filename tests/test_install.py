"""The deployment install: every console script starts in a minimal install and, when it needs
an extra, names it and exits 2 (DESIGN.md, "Deployment conditions"; issue #10).

The minimal install is simulated: a `sitecustomize.py` on PYTHONPATH puts a finder first on
`sys.meta_path` that makes torch, onnx, onnxscript, scikit-learn, scipy and matplotlib
unimportable (what `pip install "bnwvad[cpu]"` leaves out). The console scripts run as
setup.cfg declares them, in a fresh interpreter each.
"""
from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest

from _helpers import REPO

BLOCKED = ("torch", "onnx", "onnxscript", "sklearn", "scipy", "matplotlib")
SITECUSTOMIZE = f'''
import sys

BLOCKED = {BLOCKED!r}


class _MinimalInstall:
    """Not installed: the packages a `bnwvad[cpu]` deployment does not have."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _MinimalInstall())
'''


def entry_points() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = [ln.strip() for ln in cfg["options.entry_points"]["console_scripts"].splitlines() if ln.strip()]
    return dict((part.strip() for part in ln.split("=", 1)) for ln in lines)


SCRIPTS = entry_points()


@pytest.fixture(scope="module")
def minimal_env(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("minimal-install")
    (d / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(d)
    env["OMP_NUM_THREADS"] = "1"
    return env


def script(name: str, *args, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """Run console script `name` exactly as its setup.cfg entry point (what pip's generated
    script does: sys.exit(function()))."""
    module, func = SCRIPTS[name].split(":")
    code = f"import sys; sys.argv[0] = {name!r}; from {module} import {func}; sys.exit({func}())"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=180)


def names_extra(proc: subprocess.CompletedProcess, extra: str) -> bool:
    """Exit 2, and the last line, the only one that says to install something, names the
    extra; no traceback."""
    lines = proc.stderr.strip().splitlines()
    hints = [ln for ln in lines if "pip install" in ln]
    return (proc.returncode == 2 and "Traceback" not in proc.stderr and len(hints) == 1
            and lines[-1] == hints[0] and f'pip install "bnwvad[{extra}]"' in hints[0])


def test_every_console_script_goes_through_the_launcher():
    assert set(SCRIPTS) >= {"bnwvad-train", "bnwvad-eval", "bnwvad-export", "bnwvad-infer"}
    assert all(target.startswith("bnwvad.cli:") for target in SCRIPTS.values()), SCRIPTS
    # The installed scripts (when this environment has them) are these entry points.
    bindir = Path(sys.executable).parent
    for name, target in SCRIPTS.items():
        exe = bindir / name
        if exe.is_file():
            module, func = target.split(":")
            assert f"from {module} import {func}" in exe.read_text(), \
                f"{exe} is stale (setup.cfg changed): reinstall, e.g. make setup"


def test_the_blocker_works(minimal_env, tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True,
                          env=minimal_env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 1 and "No module named 'torch'" in proc.stderr
    proc = subprocess.run([sys.executable, "-c", "import bnwvad, bnwvad.runtime, onnxruntime, tqdm, psutil, click"],
                          capture_output=True, text=True, env=minimal_env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr


# The extra each command names when its own module cannot even be imported.
HELP_EXTRA = {"bnwvad-train": "train", "bnwvad-eval": "eval", "bnwvad-export": "export"}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_works_or_names_the_extra(minimal_env, tmp_path, name):
    extra = HELP_EXTRA.get(name, "cpu")
    proc = script(name, "--help", env=minimal_env, cwd=tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode == 0:
        assert proc.stdout.startswith(f"Usage: {name}"), proc.stdout
    else:
        assert names_extra(proc, extra), (proc.returncode, proc.stderr)


def test_commands_that_need_an_extra_name_it(minimal_env, tmp_path):
    # bnwvad-train (the demo by default) needs torch: nothing is generated or written first.
    proc = script("bnwvad-train", "--iterations", "1", env=minimal_env, cwd=tmp_path)
    assert names_extra(proc, "train"), proc.stderr
    assert "torch" in proc.stderr and list(tmp_path.iterdir()) == []
    # bnwvad-eval --scores needs scikit-learn (the metrics).
    (tmp_path / "scores").mkdir()
    proc = script("bnwvad-eval", "--scores", tmp_path / "scores", "--dataset", "demo", env=minimal_env, cwd=tmp_path)
    assert names_extra(proc, "eval") and "scikit-learn" in proc.stderr, proc.stderr
    # bnwvad-export needs torch and onnx.
    proc = script("bnwvad-export", tmp_path / "x.pt", "-o", tmp_path / "x.onnx", env=minimal_env, cwd=tmp_path)
    assert names_extra(proc, "export"), proc.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_infer_runs_with_onnxruntime_alone_and_plot_names_its_extra(minimal_env, tmp_path):
    from _toy_onnx import TOY_CROPS, TOY_D, build_toy_onnx

    model = build_toy_onnx(tmp_path / "toy.onnx")
    feats = tmp_path / "in"
    feats.mkdir()
    rng = np.random.default_rng(0)
    for k in range(TOY_CROPS):
        np.save(feats / f"v__{k}.npy", rng.random((12, TOY_D), dtype=np.float32))
    proc = script("bnwvad-infer", feats, "--model", model, "--out", tmp_path / "out", "--threshold", "0.1",
                  env=minimal_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "v.npy").is_file() and (tmp_path / "out" / "events.json").is_file()
    proc = script("bnwvad-infer", feats, "--model", model, "--out", tmp_path / "plotted", "--plot",
                  env=minimal_env, cwd=tmp_path)
    assert names_extra(proc, "plot") and "matplotlib" in proc.stderr, proc.stderr


# -- the launcher itself (in-process) ---------------------------------------------------------
def _fake_module(monkeypatch, name: str, command) -> None:
    import types

    mod = types.ModuleType(name)
    mod.main = command
    monkeypatch.setitem(sys.modules, name, mod)


def test_launcher_names_the_extra_behind_a_friendlier_error(monkeypatch, capsys):
    from bnwvad._extras import launch

    @click.command()
    def wrapped():
        try:
            raise ModuleNotFoundError("No module named 'sklearn'", name="sklearn")
        except ImportError as e:
            raise click.ClickException(f"{e}: evaluating needs torch") from None

    _fake_module(monkeypatch, "fake_cli_a", wrapped)
    assert launch("bnwvad-x", "fake_cli_a", args=[]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ('bnwvad-x: needs scikit-learn, which is not installed here: pip install "bnwvad[eval]"')


def test_launcher_keeps_clicks_behaviour_otherwise(monkeypatch, capsys):
    from bnwvad._extras import launch, require

    @click.command()
    @click.option("--n", type=int, required=True)
    @click.pass_context
    def cmd(ctx, n):
        if n == 1:
            raise click.ClickException("plain failure")
        if n == 3:
            ctx.exit(3)
        if n == 4:
            require("onnx_not_installed_anywhere", "--thing", extra="plot")
        if n == 5:
            raise ValueError("a bug")

    _fake_module(monkeypatch, "fake_cli_b", cmd)
    assert launch("p", "fake_cli_b", args=["--n", "0"]) == 0
    assert launch("p", "fake_cli_b", args=["--help"]) == 0 and "Usage: p" in capsys.readouterr().out
    assert launch("p", "fake_cli_b", args=[]) == 2 and "Missing option" in capsys.readouterr().err
    assert launch("p", "fake_cli_b", args=["--n", "1"]) == 1 and "plain failure" in capsys.readouterr().err
    assert launch("p", "fake_cli_b", args=["--n", "3"]) == 3
    assert launch("p", "fake_cli_b", args=["--n", "4"]) == 2      # require(): named, whatever the module
    assert 'p: --thing needs onnx_not_installed_anywhere' in capsys.readouterr().err
    with pytest.raises(ValueError, match="a bug"):
        launch("p", "fake_cli_b", args=["--n", "5"])
    # A missing optional module while importing the command's module.
    monkeypatch.delitem(sys.modules, "fake_cli_c", raising=False)

    class Finder:
        def find_spec(self, name, path=None, target=None):
            if name == "fake_cli_c":
                raise ModuleNotFoundError("No module named 'onnx'", name="onnx")

    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    assert launch("bnwvad-export", "fake_cli_c", prefer={"torch": "export"}) == 2
    assert 'pip install "bnwvad[export]"' in capsys.readouterr().err


def test_require_names_the_extra():
    from bnwvad._extras import MissingExtra, require

    assert require("json").dumps(1) == "1"
    with pytest.raises(MissingExtra) as e:
        require("matplotlib_missing_for_this_test", "--plot", extra="plot")
    assert isinstance(e.value, ModuleNotFoundError)
    assert 'pip install "bnwvad[plot]"' in str(e.value) and "--plot needs" in str(e.value)
