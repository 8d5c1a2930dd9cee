"""Fixtures of the runtime tests.

- `toy_onnx`: a tiny graph (D = 8, 3 crops) that follows the export contract (inputs,
  outputs, dynamic N/C/T, lengths masking, metadata), built with onnx.helper in
  milliseconds. Its outputs depend on each video's length (a per-video mean over real
  snippets), so padding mistakes show. Used for the runtime's own logic.
- `xd_onnx`: the published weights exported by bnwvad.export with preset xd (once per session),
  for everything that claims the real model's numbers.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from _toy_onnx import build_toy_onnx


@pytest.fixture(scope="session")
def toy_onnx(tmp_path_factory) -> Path:
    return build_toy_onnx(tmp_path_factory.mktemp("toy") / "toy.onnx")


@pytest.fixture(scope="session")
def xd_onnx(tmp_path_factory, reference_dir) -> Path:
    """The published state_dict exported with preset xd by the project's exporter, once."""
    export = pytest.importorskip("bnwvad.export")       # needs torch + onnx (the export extra)
    out = tmp_path_factory.mktemp("xd") / "xd.onnx"
    # verify=False: these tests check the outputs against the reference themselves.
    export.export_onnx(reference_dir / "official_state_dict.pkl", out, preset="xd", precision="fp32",
                       verify=False)
    return out
