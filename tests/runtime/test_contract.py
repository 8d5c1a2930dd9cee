"""The contract: one home for tensor names, metadata keys, tolerances and the Runner protocol."""
from __future__ import annotations

import numpy as np
import pytest

from bnwvad.runtime import contract
from bnwvad.runtime.contract import (OUTPUTS, TOLERANCES, compare_outputs, error, metric_tolerance_for,
                                     tolerance_for)


def test_every_precision_and_engine_family_has_an_entry_of_the_one_table():
    assert tolerance_for("fp32") == "onnx_fp32" and tolerance_for("int8", "onnxruntime") == "onnx_int8"
    assert tolerance_for("fp16", "tensorrt") == "tensorrt_fp16" and tolerance_for("fp32", "torch") == "torch_cuda"
    for (precision, family), name in contract._JUDGED_BY.items():
        assert name in TOLERANCES and TOLERANCES[name].metric == "rel_to_max", (precision, family)
    assert metric_tolerance_for("fp32") is None and TOLERANCES[metric_tolerance_for("fp16")].metric == "points"
    with pytest.raises(ValueError, match=r"no tolerance for precision 'int8' on 'tensorrt'.*fp32/onnxruntime"):
        tolerance_for("int8", "tensorrt")


def test_error_metrics():
    ref = np.array([1.0, -4.0, 2.0])
    ours = ref + np.array([0.0, 0.4, -0.1])
    assert error(ours, ref, "rel_to_max") == pytest.approx(0.1)
    assert error(ours, ref, "norm_rel") == pytest.approx(np.sqrt(0.17) / np.sqrt(21))
    assert error(ours, ref, "abs") == pytest.approx(0.4)
    with pytest.raises(ValueError, match="shape mismatch"):
        error(ours[:2], ref, "abs")
    with pytest.raises(ValueError, match="unknown metric"):
        error(ours, ref, "nope")


def test_compare_outputs_counts_only_real_snippets_and_flags_non_finite_values():
    ref = {k: np.ones((2, 4), np.float32) for k in OUTPUTS}
    ours = {k: v.copy() for k, v in ref.items()}
    ours["score"][0, 1] = 1.5           # a real snippet of video 0
    ours["dfm"][1, 3] = 1e9             # past video 1's length (2): not defined, not compared
    ours["anomaly"][1, 0] = np.nan      # a real snippet
    diffs = {d.output: d for d in compare_outputs(ours, ref, np.array([4, 2]))}
    assert diffs["score"].max_abs == pytest.approx(0.5) and diffs["score"].max_rel == pytest.approx(0.5)
    assert diffs["dfm"].max_rel == 0.0 and diffs["dfm"].within(0.0)
    assert not diffs["anomaly"].finite and not diffs["anomaly"].within(1e9)


def test_runtime_runners_and_the_torch_reference_follow_the_protocol(toy_onnx):
    from bnwvad.runtime import Runner, load_runner

    runner = load_runner(toy_onnx, "ort-cpu")
    assert isinstance(runner, Runner)
    torch_runner = pytest.importorskip("bnwvad.torch_runner")
    from bnwvad.config import ModelConfig
    from bnwvad.model import BNWVAD

    assert isinstance(torch_runner.TorchRunner(BNWVAD(ModelConfig(feature_dim=8, embed_dim=16, heads=2,
                                                                  head_dim=8, depth=1))), Runner)


def test_the_tolerance_table_reads_every_row_whole():
    # The table is text: each row's limit, metric and the whole of its reason must come through.
    assert len(TOLERANCES) == 16
    assert TOLERANCES["reference_step_stable"] == contract.Tolerance(1e-6, "abs", "1% of lr; sign-unstable "
                                                                               "elements excluded")
    assert TOLERANCES["i3d_protocol"].why == ("frames -> features: resampling may move a pixel by one grey level "
                                              "in a few places")
    assert TOLERANCES["onnx_fp16"].limit == 2e-2 and TOLERANCES["metric_int8"].limit == 0.1
    assert {t.metric for t in TOLERANCES.values()} == {"rel_to_max", "rel", "norm_rel", "abs", "points"}


def test_closing_runners_close_on_leaving_a_with_block():
    class Held(contract.Closing):
        closed = 0

        def close(self):
            self.closed += 1

    with Held() as r:
        assert r.closed == 0
    assert r.closed == 1
    with contract.Closing() as plain:          # nothing to release: close() is a no-op
        pass
    plain.close()
