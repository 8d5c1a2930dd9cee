"""Every field of every file in ../shared/reference, within the reference README's tolerances."""
import pytest

from bnwvad.reference import compare_infer, compare_train_step
from _helpers import devices


@pytest.mark.parametrize("device", devices())
def test_eval_outputs_match_published_code(reference_dir, device):
    rows = compare_infer(reference_dir, device)
    files = {r["file"] for r in rows}
    assert files == {"infer_1crop_T1.npz", "infer_1crop_T2.npz", "infer_ucf_10crop_T64.npz",
                     "infer_xd_5crop_T137.npz"}
    assert {r["field"] for r in rows} == {"score", "dfm", "anomaly", "anomaly_crop_mean"}
    bad = [r for r in rows if not r["ok"]]
    assert not bad, bad


@pytest.mark.parametrize("device", devices())
def test_train_step_matches_published_code(reference_dir, device):
    rows = compare_train_step(reference_dir, device)
    fields = {r["field"] for r in rows}
    # Nothing in the file went unchecked.
    assert {"normal_loss", "mpp_loss", "total_loss", "mpp_layer1_unweighted",
            "mpp_layer2_unweighted", "n_selected_abnormal", "grad_norm_before_clip"} <= fields
    assert sum(f.startswith("grad/") for f in fields) == 34
    assert sum(f.startswith("step_delta/") for f in fields) == 34
    assert sum(f.startswith("step_delta_end_to_end/") for f in fields) == 34
    assert sum(f.startswith("bn_after_forward/") for f in fields) == 4
    assert not [r for r in rows if r["metric"] == "unknown field"]
    bad = [r for r in rows if not r["ok"]]
    assert not bad, bad
