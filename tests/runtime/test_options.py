"""runtime.options: the option groups, messages and loading helpers the runtime's commands share."""
from __future__ import annotations

import warnings

import click
import pytest
from click.testing import CliRunner

from bnwvad.runtime import options


def _command(*decorators):
    @click.command()
    @options.group(*decorators)
    def cmd(**kw):
        return kw
    return cmd


def _values(cmd, args):
    return cmd.main(args, standalone_mode=False)


def test_backend_group_gives_every_option_in_order_with_its_defaults():
    cmd = _command(options.model_option(), options.backend_options(), options.memory_budget_option())
    assert [p.name for p in cmd.params] == ["model", "backend", "strict", "threads", "arena", "device_id", "sidecar",
                                            "memory_budget"]
    got = _values(cmd, ["-m", "m.onnx", "--memory-budget", "2GiB"])
    assert str(got["model"]) == "m.onnx" and got["backend"] == "auto" and got["strict"] is False and got["threads"] is None
    assert got["arena"] is True and got["device_id"] == 0 and got["sidecar"] is None
    assert got["memory_budget"] == 2 << 30


def test_backend_group_leaves_out_what_a_command_has_not_and_inserts_its_own():
    spin = click.option("--spin/--no-spin", default=False)
    cmd = _command(options.backend_options(choices=("auto", "ort-cpu"), threads_min=1, after_threads=[spin],
                                           arena_help=None, sidecar=False))
    assert [p.name for p in cmd.params] == ["backend", "strict", "threads", "spin", "device_id"]
    bad = CliRunner().invoke(cmd, ["--threads", "0"])
    assert bad.exit_code == 2 and "--threads" in bad.output
    bad = CliRunner().invoke(cmd, ["--backend", "tensorrt"])
    assert bad.exit_code == 2 and "tensorrt" in bad.output


def test_threshold_and_window_groups():
    root = click.option("--root", default=None)
    cmd = _command(options.threshold_options(after_calibrate=[root]),
                   options.window_options(window_help="W", lookahead_help="L", step_help="S"))
    assert [p.name for p in cmd.params] == ["threshold", "calibrate", "root", "false_alarm_rate", "window",
                                            "lookahead", "step"]
    got = _values(cmd, ["--calibrate", "a", "--calibrate", "b"])
    assert [str(p) for p in got["calibrate"]] == ["a", "b"] and got["false_alarm_rate"] == 0.01
    assert got["window"] is None and got["lookahead"] == 0 and got["step"] == 1
    assert CliRunner().invoke(cmd, ["--false-alarm-rate", "1"]).exit_code == 2


def test_memory_budget_names_a_bad_size():
    out = CliRunner().invoke(_command(options.memory_budget_option()), ["--memory-budget", "lots"])
    assert out.exit_code == 2 and "--memory-budget" in out.output


def test_messages_go_to_stderr_with_their_prefix(capsys):
    options.warn("w")
    options.fail("f")
    options.error("e")
    err = capsys.readouterr().err.splitlines()
    assert err == ["WARNING: w", "FAILED f", "error: e"]


def test_load_warning_once_says_each_warning_once(capsys):
    class Loaded:
        fallback = "ort-cpu instead of ort-cuda"

    def load(x, *, y):
        assert (x, y) == (1, 2)
        warnings.warn("fell back", RuntimeWarning)
        warnings.warn("fell back", RuntimeWarning)
        warnings.warn("Specified provider 'CUDAExecutionProvider' is not in available provider names")
        return Loaded()

    assert isinstance(options.load_warning_once(load, 1, y=2), Loaded)
    assert capsys.readouterr().err.splitlines() == ["WARNING: fell back"]


def test_calibrate_on_names_failures_and_gives_up_without_scores(capsys):
    class Bad:
        message = "v: broken"

    class Scorer:
        def __init__(self, results):
            self.results = results

        def iter_results(self, videos):
            return iter(self.results)

    assert options.calibrate_on(Scorer([Bad()]), [], [Bad()], 0.01) is None
    assert capsys.readouterr().err.splitlines() == ["FAILED (calibration) v: broken"] * 2 + [
        "error: no calibration video could be scored; no threshold"]

    class Scored:
        anomaly = __import__("numpy").linspace(0, 1, 101)

    cal = options.calibrate_on(Scorer([Scored()]), [], [], 0.1)
    assert cal.threshold == pytest.approx(0.9, abs=0.02)
    assert "calibrated threshold" in capsys.readouterr().err


def test_prepare_out_says_why_a_folder_cannot_be_written(tmp_path, capsys):
    assert options.prepare_out(tmp_path / "new") == [tmp_path / "new"]
    (tmp_path / "file").write_text("x")
    assert options.prepare_out(tmp_path / "file" / "sub") is None
    assert capsys.readouterr().err.startswith("error: ")
