"""The built-in demo dataset: real XD-Violence layout, deterministic, idempotent, I3D-like."""
import json

import numpy as np
import pytest

from bnwvad.annotations import read_annotations, read_snippet_counts
from bnwvad.data import load_test_videos, load_train_samples
from bnwvad.demo import DemoError, DemoSpec, existing_demo, generate_demo, read_manifest
from bnwvad.features import read_list

SMALL = DemoSpec(feature_dim=48, crops=3, train_normal=8, train_abnormal=12, test_normal=4,
                 test_abnormal=12, train_length=(16, 60), test_length=(16, 90))


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return generate_demo(tmp_path_factory.mktemp("demo") / "demo_data", spec=SMALL)


def files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_real_xd_layout_read_by_the_real_code_paths(demo_root):
    assert (demo_root / "list" / "XD_Train.list").is_file() and (demo_root / "XD_Annotation.txt").is_file()
    normal, abnormal = load_train_samples(demo_root / "list" / "XD_Train.list", demo_root)
    assert len(normal) == 8 * 3 and len(abnormal) == 12 * 3
    entries = read_list(demo_root / "list" / "XD_Train.list", demo_root)
    assert all(e.path.parent.name == "train" and "_label_" in e.path.name for e in entries)
    assert [e.label for e in entries] == sorted((e.label for e in entries), reverse=True)  # violent first
    test = load_test_videos(demo_root / "list" / "XD_Test.list", demo_root)
    assert len(test) == 16 and all(v.crops == 3 for v in test)
    ann = read_annotations(demo_root / "XD_Annotation.txt")
    assert set(ann) == {v.name for v in test if v.label == 1}
    counts = read_snippet_counts(demo_root / "test_snippets.csv")
    lengths = {v.name: np.load(v.paths[0]).shape[0] for v in test}
    assert counts == lengths and len(set(lengths.values())) > 8      # variable test lengths
    classes = {c for v in test if v.label for c in v.classes}
    assert len(classes) >= 4 and classes <= {"B1", "B2", "B4", "B5", "B6", "G"}


def test_features_are_i3d_like(demo_root):
    test = load_test_videos(demo_root / "list" / "XD_Test.list", demo_root)
    x = np.stack([np.load(p) for p in test[0].paths])               # (C, T, D)
    assert x.dtype == np.float32 and x.shape[-1] == 48 and (x >= 0).all()
    # Temporally smooth: neighbouring snippets differ much less than random pairs.
    step = np.abs(np.diff(x[0], axis=0)).mean()
    rand = np.abs(x[0][np.random.default_rng(0).permutation(len(x[0]))] - x[0]).mean()
    assert step < 0.7 * rand
    # Crops are perturbed views of the same video: close, not identical.
    assert 0 < np.abs(x[1] - x[0]).mean() < 0.5 * rand


def test_abnormality_ratios_span_a_few_percent_to_most_of_a_video(demo_root):
    ann = read_annotations(demo_root / "XD_Annotation.txt")
    counts = read_snippet_counts(demo_root / "test_snippets.csv")
    ratios = [sum(e - s for s, e in ev) / (16 * counts[v]) for v, ev in ann.items()]
    assert min(ratios) < 0.12 and max(ratios) > 0.6


def test_deterministic_and_idempotent(tmp_path, demo_root):
    again = generate_demo(tmp_path / "again", spec=SMALL)
    assert files(again) == files(demo_root)
    before = {p: p.stat().st_mtime_ns for p in again.rglob("*")}
    generate_demo(again, spec=SMALL)                                   # reused: nothing written
    assert {p: p.stat().st_mtime_ns for p in again.rglob("*")} == before
    assert existing_demo(again) == SMALL
    other = generate_demo(again, spec=SMALL, seed=1)                  # other parameters: regenerated
    assert read_manifest(other)["spec"]["seed"] == 1
    assert files(other) != files(demo_root)
    assert not list(tmp_path.glob(".again.*"))                        # no temporary folders left


def test_incomplete_set_is_regenerated_and_foreign_folder_left_alone(tmp_path):
    root = generate_demo(tmp_path / "d", spec=SMALL)
    next((root / "test").glob("*.npy")).unlink()
    assert existing_demo(root) is None
    generate_demo(root, spec=SMALL)
    assert existing_demo(root) == SMALL
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(DemoError, match="not a demo dataset"):
        generate_demo(foreign, spec=SMALL)
    assert (foreign / "precious.txt").read_text() == "keep me"


def test_manifest_records_version_and_parameters(demo_root):
    m = json.loads((demo_root / "demo_manifest.json").read_text())
    assert m["generator"] == "bnwvad.demo" and m["version"] >= 1
    assert m["spec"]["feature_dim"] == 48 and m["files"] == (8 + 12 + 4 + 12) * 3


def test_the_standard_demo_set_is_the_demo_preset():
    """Checkpoints trained on the demo set name the `demo` preset (5 crops, D = 128) only when
    the set has the preset's crops and D; a set generated with other sizes is not the preset's."""
    from bnwvad import PRESETS
    from bnwvad.demo import DEMO_CROPS, demo_preset

    assert demo_preset(DemoSpec()) == "demo" and DEMO_CROPS == PRESETS["demo"].crops == DemoSpec().crops
    assert DemoSpec().feature_dim == PRESETS["demo"].feature_dim
    assert demo_preset(SMALL) is None
