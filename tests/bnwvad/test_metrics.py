"""The published evaluation protocol: annotation files, frame-level ground truth, AUC and the
two APs, the _sub and per-class metrics. Hand-checked small cases, exactness against the
frame-by-frame sklearn computation, and the real datasets' totals from ../shared."""
import csv
import json
from types import SimpleNamespace as V

import numpy as np
import pytest
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from bnwvad.annotations import (detect_annotation_format, read_annotations, read_snippet_counts,
                                snippet_counts_from_features)
from bnwvad.features import group_videos, read_list
from bnwvad.metrics import (AnnotationError, EvaluationError, abnormal_frame_mask, evaluate_scores, format_table,
                            frame_scores, ground_truth, video_ground_truth)
from bnwvad.score_folders import load_score_dir


def vid(name, label, classes=()):
    return V(name=name, label=label, classes=tuple(classes))


# ---------------------------------------------------------------------------- annotations
def test_ucf_annotations_parse_names_skip_minus_one_and_autodetect(tmp_path):
    p = tmp_path / "UCF_Annotation.txt"
    p.write_text("Arson/Arson022_x264.mp4 8640 Arson 3500 4000 -1 -1 \n"
                 "Burglary/Burglary079_x264.mp4 14853 Burglary 7750 10710 200 300\n"
                 "Testing_Normal_Videos_Anomaly/Normal_Videos_872_x264.mp4 530 Normal -1 -1 -1 -1")
    assert detect_annotation_format(p) == "ucf"
    ann = read_annotations(p)
    assert ann == {"Arson022_x264": ((3500, 4000),), "Burglary079_x264": ((7750, 10710), (200, 300)),
                   "Normal_Videos_872_x264": ()}
    assert read_annotations(p, "ucf") == ann


def test_xd_annotations_parse_any_number_of_events(tmp_path):
    p = tmp_path / "XD_Annotation.txt"
    p.write_text("v=S-7rRLrxnVQ__#1_label_B4-0-0 0 1517 1970 3038\n\n"
                 "Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6 77 1430")   # no final newline
    assert detect_annotation_format(p) == "xd"
    assert read_annotations(p) == {"v=S-7rRLrxnVQ__#1_label_B4-0-0": ((0, 1517), (1970, 3038)),
                                   "Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6": ((77, 1430),)}


@pytest.mark.parametrize("text, fmt, match", [
    ("a_label_B1-0-0 0 10\nb_label_B1-0-0 0 10 20\n", None, r"XD_bad\.txt:2: 3 frame indices.*expected pairs"),
    ("a_label_B1-0-0 0 1x\n", "xd", r":1: '1x' is not an integer"),
    ("a_label_B1-0-0 50 10\n", None, r":1: event \(50, 10\).*ends before it starts"),
    ("a_label_B1-0-0 -5 10\n", None, r":1: event \(-5, 10\).*negative"),
    ("a 0 10\na 20 30\n", None, r":2: video 'a' is annotated twice"),
    ("Arson/Arson022_x264.mp4 8640 Arson 3500 4000\n", "ucf", r":1: 5 fields.*expected 7"),
    ("Arson/A.mp4 8640 Arson 3500 4000 -1 -1\nArson/B.mp4 86 Arson x 4000 -1 -1\n", None,
     r":2: 'x' is not an integer"),
    ("", None, r"has no lines"),
    ("name word other\n", None, r":1: cannot tell the annotation format"),
])
def test_malformed_annotation_lines_name_file_and_line(tmp_path, text, fmt, match):
    p = tmp_path / "XD_bad.txt"
    p.write_text(text)
    with pytest.raises(AnnotationError, match=match) as e:
        read_annotations(p, fmt)
    assert str(p) in str(e.value)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(AnnotationError, match="no such annotation file"):
        read_annotations(tmp_path / "nope.txt")


# ---------------------------------------------------------------------------- ground truth
def test_ground_truth_is_zeros_16T_with_events_set_and_clipped():
    gt = video_ground_truth([(3, 20), (30, 100)], snippets=2)
    assert gt.shape == (32,) and gt.dtype == np.uint8
    assert np.flatnonzero(gt).tolist() == list(range(3, 20)) + [30, 31]   # past 16 T: clipped
    assert video_ground_truth([], 3).sum() == 0
    assert video_ground_truth([(0, 5)], 1, frames_per_snippet=4).tolist() == [1, 1, 1, 1]
    np.testing.assert_array_equal(frame_scores(np.array([0.5, 0.25], np.float32)),
                                  np.r_[np.full(16, 0.5), np.full(16, 0.25)].astype(np.float32))

    videos = [vid("a", 1, ["B1"]), vid("n", 0, ["A"])]
    full = ground_truth(videos, {"a": ((0, 4),)}, {"a": 1, "n": 2})
    assert full.tolist() == [1] * 4 + [0] * 12 + [0] * 32
    assert abnormal_frame_mask(videos, {"a": 1, "n": 2}).tolist() == [True] * 16 + [False] * 32


# ---------------------------------------------------------------------------- metrics
# Frame-level (frames_per_snippet=1) hand-worked case. All frames, in order:
#   y = [1, 0, 1, 0], s = [.9, .8, .7, .85]
#   AUC: .9 beats both normals, .7 none -> 2/4. PR points (desc. threshold):
#   (R, P) = (.5, 1), (.5, 1/2), (.5, 1/3), (1, 1/2); published AP = trapezoid over recall
#   = .5 * 1 + .5 * (1/3 + 1/2) / 2 = 17/24; average_precision = .5 * 1 + .5 * 1/2 = 3/4.
HAND_VIDEOS = [vid("x_label_B1-0-0", 1, ["B1"]), vid("y_label_G-B2-0", 1, ["G", "B2"]),
               vid("z_label_A", 0, ["A"])]
HAND_SCORES = {"x_label_B1-0-0": np.array([0.9, 0.8], np.float32),
               "y_label_G-B2-0": np.array([0.7], np.float32), "z_label_A": np.array([0.85], np.float32)}
HAND_ANN = {"x_label_B1-0-0": ((0, 1),), "y_label_G-B2-0": ((0, 1),)}


def test_hand_checked_metrics_published_ap_differs_from_average_precision():
    m = evaluate_scores(HAND_SCORES, HAND_VIDEOS, HAND_ANN, frames_per_snippet=1)
    assert m["auc"] == pytest.approx(2 / 4)
    assert m["ap"] == pytest.approx(17 / 24)
    assert m["average_precision"] == pytest.approx(3 / 4)
    assert m["ap"] != pytest.approx(m["average_precision"])
    # _sub: abnormal videos only, y = [1, 0, 1], s = [.9, .8, .7]: AUC 1/2,
    # PR (.5, 1), (.5, 1/2), (1, 2/3): AP = .5 + .5 * (1/2 + 2/3) / 2 = 19/24, avgP = 5/6.
    assert m["auc_sub"] == pytest.approx(1 / 2)
    assert m["ap_sub"] == pytest.approx(19 / 24)
    assert m["average_precision_sub"] == pytest.approx(5 / 6)
    assert (m["frames"], m["anomalous_frames"], m["frames_sub"]) == (4, 2, 3)
    assert (m["videos"], m["abnormal_videos"]) == (3, 2)
    # Per class: normal videos plus that class's videos; y counts for Explosion AND Shooting.
    pc = m["per_class"]
    assert sorted(pc) == ["Explosion", "Fighting", "Shooting"]
    assert pc["Fighting"] == {"auc": 1.0, "ap": 1.0, "average_precision": 1.0, "videos": 1,
                              "frames": 3, "anomalous_frames": 1}
    # Explosion: y = [1, 0], s = [.7, .85]: AUC 0; PR (0, 0), (1, 1/2): AP = (0 + 1/2) / 2.
    assert pc["Explosion"]["auc"] == 0.0
    assert pc["Explosion"]["ap"] == pytest.approx(1 / 4)
    assert pc["Explosion"]["average_precision"] == pytest.approx(1 / 2)
    assert pc["Shooting"] == pc["Explosion"]
    json.dumps(m, allow_nan=False)                       # plain, JSON-serialisable


def test_snippet_grouping_is_bitwise_equal_to_frame_by_frame_sklearn():
    """Weights per snippet instead of 16 repeated frames must not change a single digit."""
    rng = np.random.default_rng(7)
    videos, scores, ann, snippets = [], {}, {}, {}
    for i in range(40):
        t = int(rng.integers(1, 30))
        abnormal = i % 3 != 0
        name = f"v{i}_label_{'B1' if i % 2 else 'G'}-0-0" if abnormal else f"v{i}_label_A"
        videos.append(vid(name, int(abnormal), ["B1" if i % 2 else "G"] if abnormal else ["A"]))
        # Rounded scores: many ties, within and across videos.
        scores[name] = np.round(rng.random(t), 2).astype(np.float32)
        snippets[name] = t
        if abnormal:
            s = int(rng.integers(0, 16 * t))
            e = int(rng.integers(s, 16 * t + 40))     # events not on snippet boundaries, some clipped
            ann[name] = ((s, e),)
    m = evaluate_scores(scores, videos, ann, snippets=snippets)
    gt = ground_truth(videos, ann, snippets)
    pred = np.concatenate([frame_scores(scores[v.name]) for v in videos])
    precision, recall, _ = precision_recall_curve(gt, pred)
    assert m["auc"] == roc_auc_score(gt, pred)
    assert m["ap"] == auc(recall, precision)
    assert m["average_precision"] == average_precision_score(gt, pred)
    mask = abnormal_frame_mask(videos, snippets)
    precision, recall, _ = precision_recall_curve(gt[mask], pred[mask])
    assert m["auc_sub"] == roc_auc_score(gt[mask], pred[mask])
    assert m["ap_sub"] == auc(recall, precision)
    assert m["frames"] == gt.size and m["anomalous_frames"] == int(gt.sum())
    # Per class "Fighting" = normal videos + B1 videos, in list order.
    keep = np.concatenate([np.full(16 * snippets[v.name], v.label == 0 or "B1" in v.classes)
                           for v in videos])
    assert m["per_class"]["Fighting"]["auc"] == roc_auc_score(gt[keep], pred[keep])
    precision, recall, _ = precision_recall_curve(gt[keep], pred[keep])
    assert m["per_class"]["Fighting"]["ap"] == auc(recall, precision)


def test_undefined_metrics_are_none_not_nan():
    videos = [vid("n1", 0), vid("n2", 0)]
    m = evaluate_scores({"n1": np.ones(2), "n2": np.zeros(3)}, videos, {})
    assert m["auc"] is None and m["ap"] is None and m["auc_sub"] is None
    assert m["frames"] == 80 and m["anomalous_frames"] == 0 and m["per_class"] == {}
    json.dumps(m, allow_nan=False)
    assert "n/a" in format_table(m)


def test_unlabelled_videos_are_abnormal_when_annotated():
    videos = [vid("01_0014", None), vid("01_001", None)]           # ShanghaiTech-like names
    m = evaluate_scores({"01_0014": np.array([1.0, 0.0]), "01_001": np.array([0.0])}, videos,
                        {"01_0014": ((0, 16),)})
    assert m["abnormal_videos"] == 1 and m["frames_sub"] == 32 and m["auc"] == 1.0


@pytest.mark.parametrize("scores, match", [
    ({"x_label_B1-0-0": np.zeros(2), "z_label_A": np.zeros(1)},
     r"no scores for 1 of 3 test videos, first 'y_label_G-B2-0'"),
    ({**HAND_SCORES, "z_label_A": np.zeros(3)}, r"video 'z_label_A': 3 snippet scores; expected 1"),
    ({**HAND_SCORES, "z_label_A": np.zeros((1, 1))}, r"'z_label_A': scores of shape \(1, 1\); expected"),
    ({**HAND_SCORES, "z_label_A": np.array([np.nan])}, r"'z_label_A': score nan at snippet 0"),
])
def test_bad_scores_name_the_video_found_and_expected(scores, match):
    snippets = {"x_label_B1-0-0": 2, "y_label_G-B2-0": 1, "z_label_A": 1}
    with pytest.raises(EvaluationError, match=match):
        evaluate_scores(scores, HAND_VIDEOS, HAND_ANN, snippets=snippets, frames_per_snippet=1)


def test_annotations_of_another_dataset_are_refused():
    with pytest.raises(EvaluationError, match="does not belong to this test list"):
        evaluate_scores(HAND_SCORES, HAND_VIDEOS, {"other": ((0, 5),)})


def test_score_dir_and_snippet_csv_loading(tmp_path):
    videos = [vid("a", 1), vid("b", 0)]
    np.save(tmp_path / "a.npy", np.ones(3, np.float32))
    with pytest.raises(EvaluationError, match=r"no score file for 1 of 2 test videos, first 'b.npy'"):
        load_score_dir(tmp_path, videos)
    np.save(tmp_path / "b.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(EvaluationError, match="b.npy: holds a pickled object array, which is never loaded"):
        load_score_dir(tmp_path, videos)
    np.save(tmp_path / "b.npy", np.ones((2, 2), np.float32))
    with pytest.raises(EvaluationError, match=r"b.npy: array of shape \(2, 2\).*expected a float vector"):
        load_score_dir(tmp_path, videos)
    np.save(tmp_path / "b.npy", np.zeros(2, np.float32))
    assert {k: v.shape for k, v in load_score_dir(tmp_path, videos).items()} == {"a": (3,), "b": (2,)}

    csv_path = tmp_path / "t.csv"
    csv_path.write_text("video,snippets,anomalous_frames\na,3,0\nb,2,0\n")
    assert read_snippet_counts(csv_path) == {"a": 3, "b": 2}
    csv_path.write_text("name,T\na,3\n")
    with pytest.raises(EvaluationError, match="expected a CSV with columns 'video' and 'snippets'"):
        read_snippet_counts(csv_path)
    csv_path.write_text("video,snippets\na,zero\n")
    with pytest.raises(EvaluationError, match=r"t.csv:2: snippets 'zero' for 'a'"):
        read_snippet_counts(csv_path)


def test_snippet_counts_for_a_test_list_need_every_video(tmp_path):
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("video,snippets\nb,2\nextra,9\na,3\n")
    videos = [vid("a", 1), vid("b", 0)]
    assert list(read_snippet_counts(csv_path, videos).items()) == [("a", 3), ("b", 2)]
    with pytest.raises(EvaluationError, match=r"t.csv: no snippet count for 1 test videos, first 'c'; "
                                              r"expected a row per video of my.list"):
        read_snippet_counts(csv_path, [*videos, vid("c", 0)], list_file="my.list")


def test_snippet_counts_from_feature_headers(tmp_path):
    (tmp_path / "test").mkdir()
    for c in range(2):
        np.save(tmp_path / "test" / f"v_label_A__{c}.npy", np.zeros((7, 4), np.float32))
    (tmp_path / "t.list").write_text("test/v_label_A__0.npy\ntest/v_label_A__1.npy\n")
    videos = group_videos(read_list(tmp_path / "t.list"))
    assert snippet_counts_from_features(videos) == {"v_label_A": 7}
    np.save(tmp_path / "test" / "v_label_A__1.npy", np.zeros((8, 4), np.float32))
    with pytest.raises(EvaluationError, match=r"crop files disagree on T \[7, 8\]"):
        snippet_counts_from_features(videos)


# ---------------------------------------------------------------------------- real datasets
def _real(datasets_dir, sub, list_name, ann_name):
    d = datasets_dir / sub
    videos = group_videos(read_list(d / list_name))
    snippets = read_snippet_counts(d / "test_snippets.csv")
    return d, videos, snippets, read_annotations(d / ann_name)


def test_ucf_crime_ground_truth_reproduces_published_totals(datasets_dir):
    d, videos, snippets, ann = _real(datasets_dir, "ucf-crime", "UCF_Test.list", "UCF_Annotation.txt")
    assert len(videos) == 290 and sum(v.label for v in videos) == 140
    assert set(ann) <= {v.name for v in videos}
    gt = ground_truth(videos, ann, snippets)
    assert gt.size == 1_109_680 and int(gt.sum()) == 84_128
    # Per video, the CSV's anomalous_frames column agrees too.
    with open(d / "test_snippets.csv") as f:
        rows = {r["video"]: int(r["anomalous_frames"]) for r in csv.DictReader(f)}
    for v in videos:
        assert video_ground_truth(ann.get(v.name, ()), snippets[v.name]).sum() == rows[v.name], v.name
    # Metrics on the real layout: random scores give chance-level AUC; 13 classes.
    rng = np.random.default_rng(0)
    m = evaluate_scores({v.name: rng.random(snippets[v.name]) for v in videos}, videos, ann,
                        snippets=snippets)
    assert (m["frames"], m["anomalous_frames"]) == (1_109_680, 84_128)
    assert abs(m["auc"] - 0.5) < 0.02
    assert len(m["per_class"]) == 13 and m["per_class"]["Arson"]["videos"] == 9


def test_xd_violence_ground_truth_and_anomaly_mask(datasets_dir):
    d, videos, snippets, ann = _real(datasets_dir, "xd-violence", "XD_Test.list", "XD_Annotation.txt")
    assert len(videos) == 800 and sum(v.label for v in videos) == 500
    assert set(ann) == {v.name for v in videos if v.label == 1}
    gt = ground_truth(videos, ann, snippets)
    assert gt.size == 2_330_384 and int(gt.sum()) == 537_805
    published = np.load(d / "xd_anomaly_mask.npy", allow_pickle=False)
    mask = abnormal_frame_mask(videos, snippets)
    assert mask.dtype == published.dtype == np.bool_
    np.testing.assert_array_equal(mask, published)
    assert int(mask.sum()) == 1_078_016


def test_xd_violence_per_class_follows_table_9(datasets_dir):
    _, videos, snippets, ann = _real(datasets_dir, "xd-violence", "XD_Test.list", "XD_Annotation.txt")
    scores = {v.name: np.zeros(snippets[v.name]) for v in videos}
    m = evaluate_scores(scores, videos, ann, snippets=snippets)
    assert sorted(m["per_class"]) == ["Abuse", "Car accident", "Explosion", "Fighting", "Riot", "Shooting"]
    normal_frames = m["frames"] - m["frames_sub"]
    for c, pc in m["per_class"].items():
        members = [v for v in videos if v.label == 1 and any(
            {"B1": "Fighting", "B2": "Shooting", "B4": "Riot", "B5": "Abuse", "B6": "Car accident",
             "G": "Explosion"}.get(t) == c for t in v.classes)]
        assert pc["videos"] == len(members)
        assert pc["frames"] == normal_frames + 16 * sum(snippets[v.name] for v in members)
        assert pc["auc"] == 0.5            # constant scores: chance, every class
