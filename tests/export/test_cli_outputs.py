"""bnwvad-export's output paths and exit statuses, as the installed command: an -o whose folder
cannot be created or written is found before any work (one line, exit 2); an interrupted export
writes nothing and exits 130; --help says what -o is and what every exit status means."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bnwvad import save_checkpoint

EXE = Path(sys.executable).parent / "bnwvad-export"


def _cli(*args):
    cmd = [str(EXE)] if EXE.is_file() else [sys.executable, "-m", "bnwvad.export.cli"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.fixture
def ckpt(tiny, tmp_path):
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, tiny(seed=5), preset="shanghaitech")
    return path


@pytest.mark.parametrize("case", ["under_a_file", "proc", "is_a_folder", "trt_under_a_file"])
def test_an_output_folder_that_cannot_be_written_is_found_before_any_work(ckpt, tmp_path, case):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    good = tmp_path / "ok" / "m.onnx"
    flag, out, message = {
        "under_a_file": ("-o/--output", tmp_path / "a_file" / "sub" / "m.onnx",
                         f"its folder {tmp_path / 'a_file' / 'sub'}: cannot be created: {tmp_path / 'a_file'} "
                         f"is a file, not a folder"),
        # Root ignores permission bits: /proc is a folder nobody may create anything in.
        "proc": ("-o/--output", Path("/proc/bnwvad-test/m.onnx"), "cannot create the folder"),
        "is_a_folder": ("-o/--output", tmp_path / "a_folder", "is a folder; expected a file name"),
        "trt_under_a_file": ("--trt", tmp_path / "a_file" / "m.engine",
                             f"its folder {tmp_path / 'a_file'}: is a file, not a folder"),
    }[case]
    args = [ckpt, "-o", out] if flag == "-o/--output" else [ckpt, "-o", good, "--trt", out]
    r = _cli(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    # One line naming the path; "loading <checkpoint>" never printed: nothing ran.
    assert len(lines) == 1 and lines[0].startswith(f"bnwvad-export: error: {flag} {out}") and message in lines[0], lines
    assert not (tmp_path / "ok").exists() and (tmp_path / "a_file").read_text() == "x"


def test_engine_output_folder_is_checked_too(tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "m.onnx").write_bytes(b"not read: the output is checked first")
    r = _cli("engine", tmp_path / "m.onnx", "-o", tmp_path / "a_file" / "m.engine")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert f"-o/--output {tmp_path / 'a_file' / 'm.engine'}: its folder" in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_export_writes_nothing_and_exits_130(ckpt, tmp_path, sig):
    out = tmp_path / "new" / "m.onnx"
    cmd = [str(EXE)] if EXE.is_file() else [sys.executable, "-m", "bnwvad.export.cli"]
    proc = subprocess.Popen([*cmd, str(ckpt), "-o", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    seen = []
    deadline = time.monotonic() + 300
    for line in proc.stderr:                    # interrupt while the written graph is verified
        seen.append(line)
        if "verifying the written graph" in line or time.monotonic() > deadline:
            break
    proc.send_signal(sig)
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    err = "".join(seen) + rest
    assert proc.returncode == 130, err
    assert f"bnwvad-export: interrupted ({sig.name}); nothing was written" in err and "Traceback" not in err
    assert not (tmp_path / "new").exists()     # neither the file, its staging folder, nor the folder


def test_help_says_what_o_is_and_every_exit_status():
    from bnwvad.export.cli import main

    for args in (["onnx", "--help"], ["engine", "--help"], ["--help"]):
        text = CliRunner().invoke(main, args, terminal_width=100).output
        for line in ("0    written", "1    the checkpoint or graph failed", "2    nothing could run",
                     "130  interrupted"):
            assert line in text, (args, line)
        assert "TEXT" not in text, args
    onnx_help = CliRunner().invoke(main, ["onnx", "--help"], terminal_width=100).output
    assert re.search(r"-o, --output FILE\s+Output \.onnx FILE", onnx_help)
    engine_help = CliRunner().invoke(main, ["engine", "--help"], terminal_width=100).output
    assert re.search(r"-o, --output FILE\s+Output TensorRT engine FILE", engine_help)
