"""Training/test data in the real layouts: resampling, labels, crops, stacked files, audio,
sampling and prefetching."""
from pathlib import Path

import numpy as np
import pytest

from bnwvad.data import BatchLoader, EpochSampler, LoaderConfig, load_test_videos, load_train_samples
from bnwvad.features import FeatureFileError
from bnwvad.samples import AudioSource, load_sample, load_test_features, resample, segment_bounds


def published_resample(video_feature, num_segments, len_feature):
    """A literal transcription of the published XDVideo.get_data (dataset_loader.py)."""
    new_feature = np.zeros((num_segments, len_feature)).astype(np.float32)
    sample_index = np.linspace(0, video_feature.shape[0], num_segments + 1, dtype=np.uint16)
    for i in range(len(sample_index) - 1):
        if sample_index[i] == sample_index[i + 1]:
            new_feature[i, :] = video_feature[sample_index[i], :]
        else:
            new_feature[i, :] = video_feature[sample_index[i]:sample_index[i + 1], :].mean(0)
    return new_feature


@pytest.mark.parametrize("length", [1, 2, 7, 199, 200, 201, 399, 401, 777, 1503, 4096])
def test_resample_is_bit_identical_to_the_published_loader(length):
    rng = np.random.default_rng(length)
    x = (rng.random((length, 1024), dtype=np.float32) * 8).astype(np.float32)
    ours = resample(x, 200)
    assert ours.dtype == np.float32 and ours.shape == (200, 1024)
    np.testing.assert_array_equal(ours, published_resample(x, 200, 1024))


def test_resample_rule_on_a_hand_example():
    x = np.arange(10, dtype=np.float32)[:, None]          # rows 0..9
    # r = floor(linspace(0, 10, 5)) = [0, 2, 5, 7, 10]
    np.testing.assert_array_equal(resample(x, 4)[:, 0], [0.5, 3.0, 5.5, 8.0])
    # Shorter than T: empty ranges repeat row r[i]; r = floor(linspace(0, 3, 7)) = [0,0,1,1,2,2,3]
    np.testing.assert_array_equal(resample(x[:3], 6)[:, 0], [0, 0, 1, 1, 2, 2])


def test_segment_bounds_match_uint16_linspace_and_do_not_wrap():
    for length in (1, 13, 200, 1000, 65535):
        np.testing.assert_array_equal(segment_bounds(length, 200),
                                      np.linspace(0, length, 201, dtype=np.uint16).astype(np.int64))
    r = segment_bounds(70000, 200)              # uint16 would wrap here; we do not
    assert r[-1] == 70000 and np.all(np.diff(r) >= 0)


# -- tiny trees in the real layouts ---------------------------------------------------------
def write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(arr, dtype=np.float32), allow_pickle=False)


def xd_tree(tmp_path, dim=8, crops=2, lengths=None, audio=False):
    """XD-Violence layout; the list interleaves normal and violent videos on purpose."""
    names = ["Movie.A__#1_label_A", "Movie.B__#00-01_label_B1-0-0", "Movie.C__#1_label_A",
             "Movie.D__#2_label_G-B2-0", "Movie.E__#1_label_A", "Movie.F__#3_label_B4-0-0"]
    lengths = lengths or [5, 9, 12, 3, 40, 7]
    rng = np.random.default_rng(0)
    lines = []
    for name, t in zip(names, lengths):
        for k in range(crops):
            rel = f"train/{name}__{k}.npy"
            write(tmp_path / rel, rng.random((t, dim)))
            lines.append(rel)
        if audio:
            write(tmp_path / "audio" / "train" / f"{name}__vggish.npy", rng.random((t, 4)))
    lf = tmp_path / "list" / "XD_Train.list"
    lf.parent.mkdir(exist_ok=True)
    lf.write_text("\n".join(lines))                     # no final newline, like UCF_Test.list
    return lf, names


def test_labels_come_from_names_and_every_crop_is_a_sample(tmp_path):
    lf, names = xd_tree(tmp_path, crops=3)
    normal, abnormal = load_train_samples(lf, tmp_path)
    assert [s.video for s in normal] == [n for n in names if "_label_A" in n for _ in range(3)]
    assert [s.video for s in abnormal] == [n for n in names if "_label_A" not in n for _ in range(3)]
    assert {s.label for s in normal} == {0} and {s.label for s in abnormal} == {1}
    assert normal[1].path == tmp_path / "train" / f"{names[0]}__1.npy"
    x = load_sample(normal[0], feature_dim=8)
    assert x.shape == (5, 8) and x.dtype == np.float32


def test_ucf_layout_labels_by_normal_in_name(tmp_path):
    rels = ["dataset/Abuse/Abuse001_x264__0.npy", "dataset/Abuse/Abuse001_x264__1.npy",
            "dataset/Training_Normal_Videos_Anomaly/Normal_Videos001_x264__0.npy",
            "dataset/Training_Normal_Videos_Anomaly/Normal_Videos001_x264__1.npy"]
    lf = tmp_path / "UCF_Train.list"
    lf.write_text("\n".join(rels) + "\n")
    normal, abnormal = load_train_samples(lf, tmp_path)
    assert [s.video for s in normal] == ["Normal_Videos001_x264"] * 2
    assert [s.video for s in abnormal] == ["Abuse001_x264"] * 2


def test_real_list_files_counts(datasets_dir):
    xd = datasets_dir / "xd-violence"
    normal, abnormal = load_train_samples(xd / "XD_Train.list", "/nonexistent")
    assert len({s.video for s in abnormal}) == 1905 and len(abnormal) == 1905 * 5
    assert len({s.video for s in normal}) == 2049 and len(normal) == 2049 * 5
    test = load_test_videos(xd / "XD_Test.list", "/nonexistent")
    assert len(test) == 800 and all(v.crops == 5 for v in test)
    assert sum(v.label for v in test) == 500 and all(v.label == 1 for v in test[:500])

    ucf = datasets_dir / "ucf-crime"
    normal, abnormal = load_train_samples(ucf / "UCF_Train.list", "/nonexistent")
    assert len({s.video for s in abnormal}) == 810 and len(abnormal) == 8100
    assert len({s.video for s in normal}) == 800 and len(normal) == 8000
    test = load_test_videos(ucf / "UCF_Test.list", "/nonexistent")
    assert len(test) == 290 and sum(v.label for v in test) == 140 and test[0].crops == 10


def test_unlabeled_list_line_is_refused_with_the_file_named(tmp_path):
    write(tmp_path / "x__0.npy", np.ones((3, 4)))
    lf = tmp_path / "train.list"
    lf.write_text("x__0.npy\n")
    with pytest.raises(FeatureFileError, match=r"train\.list: 1 line\(s\) carry no label"):
        load_train_samples(lf, tmp_path)
    lf.write_text("x__0.npy 1\n")                        # a second column gives the label
    with pytest.raises(FeatureFileError, match="no normal training videos"):
        load_train_samples(lf, tmp_path)


def test_stacked_files_split_into_crops(tmp_path):
    rng = np.random.default_rng(1)
    stacked = {n: rng.random((t, 3, 6)).astype(np.float32)
               for n, t in (("a_label_A", 11), ("b_label_B1-0-0", 4), ("c_label_A", 30), ("d_label_G-0-0", 9))}
    for n, arr in stacked.items():
        write(tmp_path / "feat" / f"{n}.npy", arr)
    lf = tmp_path / "train.list"
    lf.write_text("\n".join(f"feat/{n}.npy" for n in stacked))
    normal, abnormal = load_train_samples(lf, tmp_path)
    assert [(s.video, s.crop) for s in normal] == [(n, c) for n in ("a_label_A", "c_label_A") for c in range(3)]
    assert len(abnormal) == 6
    np.testing.assert_array_equal(load_sample(normal[4]), stacked["c_label_A"][:, 1])
    # Through the loader, with and without the cache: crop c of the stacked file, resampled.
    for cache in (0, 1 << 20):
        loader = BatchLoader(normal, abnormal, batch_size=2, segments=5, seed=3,
                             config=LoaderConfig(workers=0, cache_bytes=cache))
        batch = next(loader.batches(0, 1))
        idx = loader.samplers[0].indices(0)
        for row, i in enumerate(idx):
            s = normal[i]
            np.testing.assert_array_equal(batch.normal[row], resample(stacked[s.video][:, s.crop], 5))
    test = load_test_videos(lf, tmp_path)
    assert test[0].stacked and load_test_features(test[0]).shape == (3, 11, 6)


def test_audio_is_appended_per_video(tmp_path):
    lf, names = xd_tree(tmp_path, dim=8, crops=2, audio=True)
    src = AudioSource(root=tmp_path / "audio")
    normal, abnormal = load_train_samples(lf, tmp_path, audio=src)
    s = normal[1]
    x = load_sample(s, feature_dim=12)
    vis = np.load(s.path)
    aud = np.load(tmp_path / "audio" / "train" / f"{s.video}__vggish.npy")
    np.testing.assert_array_equal(x, np.concatenate([vis, aud], axis=1))
    # An audio list instead of the folder convention (paths relative to the audio root).
    al = tmp_path / "audio.list"
    al.write_text("\n".join(f"train/{n}__vggish.npy" for n in names))
    normal2, _ = load_train_samples(lf, tmp_path, audio=AudioSource(root=tmp_path / "audio", lists=(al,)))
    assert normal2[1].audio == s.audio
    # Test videos carry their audio; every crop gets the same audio rows.
    tl = tmp_path / "test.list"
    tl.write_text("\n".join(f"train/{names[1]}__{k}.npy" for k in range(2)))
    v = load_test_videos(tl, tmp_path, audio=src)[0]
    feats = load_test_features(v, feature_dim=12)
    assert feats.shape == (2, 9, 12)
    np.testing.assert_array_equal(feats[0, :, 8:], feats[1, :, 8:])


def test_audio_length_rules(tmp_path):
    lf, names = xd_tree(tmp_path, dim=8, crops=1, audio=True)
    src = AudioSource(root=tmp_path / "audio")
    # One snippet off: both cut to the shorter.
    write(tmp_path / "audio" / "train" / f"{names[0]}__vggish.npy", np.ones((6, 4)))
    normal, _ = load_train_samples(lf, tmp_path, audio=src)
    assert load_sample(normal[0]).shape == (5, 12)
    write(tmp_path / "audio" / "train" / f"{names[0]}__vggish.npy", np.ones((9, 4)))
    with pytest.raises(FeatureFileError, match=r"9 audio snippets but .* 5 visual snippets"):
        load_sample(normal[0])
    (tmp_path / "audio" / "train" / f"{names[2]}__vggish.npy").unlink()
    with pytest.raises(FeatureFileError, match=rf"no audio features found; looked for .*{names[2]}__vggish\.npy"):
        load_train_samples(lf, tmp_path, audio=src)


def test_wrong_feature_dim_names_the_file(tmp_path):
    lf, names = xd_tree(tmp_path, dim=8)
    normal, _ = load_train_samples(lf, tmp_path)
    with pytest.raises(FeatureFileError, match=rf"{names[0]}__0\.npy: feature dimension D = 8; expected D = 1024"):
        load_sample(normal[0], feature_dim=1024)


# -- sampling and loading ---------------------------------------------------------------------
def test_epoch_sampler_is_a_reshuffled_drop_last_epoch_sequence():
    s = EpochSampler(10, 3, seed=7, stream=1)
    assert s.per_epoch == 3
    epoch0 = np.concatenate([s.indices(i) for i in range(3)])
    assert len(set(epoch0.tolist())) == 9                 # no repeats within an epoch
    epoch1 = np.concatenate([s.indices(i) for i in range(3, 6)])
    assert not np.array_equal(epoch0, epoch1)            # reshuffled
    again = EpochSampler(10, 3, seed=7, stream=1)
    np.testing.assert_array_equal(again.indices(4), s.indices(4))   # a pure function of the step
    assert not np.array_equal(EpochSampler(10, 3, seed=7, stream=0).indices(0), s.indices(0))
    assert s.position(4) == {"epoch": 1, "batch": 1, "batches_per_epoch": 3}
    with pytest.raises(ValueError, match="only 2 normal samples for a batch of 3"):
        EpochSampler(2, 3, seed=0, stream=0, name="normal samples")


def test_batches_do_not_depend_on_workers_prefetch_cache_or_start(tmp_path):
    lf, _ = xd_tree(tmp_path, crops=3)
    normal, abnormal = load_train_samples(lf, tmp_path)

    def run(start, stop, **cfg):
        loader = BatchLoader(normal, abnormal, batch_size=4, segments=6, seed=11, config=LoaderConfig(**cfg))
        return [(b.step, b.normal.copy(), b.abnormal.copy()) for b in loader.batches(start, stop)]

    ref = run(0, 7, workers=0)
    assert [r[0] for r in ref] == list(range(7)) and ref[0][1].shape == (4, 6, 8)
    for got in (run(0, 7, workers=3, prefetch=1), run(0, 7, workers=2, prefetch=4, cache_bytes=1 << 20)):
        for (s1, n1, a1), (s2, n2, a2) in zip(ref, got):
            assert s1 == s2
            np.testing.assert_array_equal(n1, n2)
            np.testing.assert_array_equal(a1, a2)
    resumed = run(4, 7, workers=2)
    for (_, n1, a1), (_, n2, a2) in zip(ref[4:], resumed):
        np.testing.assert_array_equal(n1, n2)
        np.testing.assert_array_equal(a1, a2)


def test_a_bad_file_surfaces_from_the_worker_threads(tmp_path):
    lf, names = xd_tree(tmp_path, crops=2)
    normal, abnormal = load_train_samples(lf, tmp_path)
    (tmp_path / "train" / f"{names[1]}__0.npy").write_bytes(b"garbage")
    loader = BatchLoader(normal, abnormal, batch_size=3, segments=4, seed=0, feature_dim=8,
                         config=LoaderConfig(workers=2))
    with pytest.raises(FeatureFileError, match=rf"{names[1]}__0\.npy: not a"):
        for _ in loader.batches(0, 20):
            pass


def test_memory_bound_is_stated():
    loader = BatchLoader([None] * 64, [None] * 64, batch_size=64, segments=200, seed=0, feature_dim=1024,
                         config=LoaderConfig(prefetch=2))
    assert loader.batch_bytes == 2 * 64 * 200 * 1024 * 4
    assert loader.memory_bound_bytes() == 3 * loader.batch_bytes


# -- the one .npy reader (bnwvad.features): every bad file named, nothing unpickled -------------
def _save(arr, **kw):
    return lambda p: np.save(p, arr, **kw)


def _truncated(p):
    np.save(p, np.ones((6, 8), np.float32))
    p.write_bytes(p.read_bytes()[:-40])


def _corrupt_header(p):
    np.save(p, np.ones((6, 8), np.float32))
    raw = bytearray(p.read_bytes())
    raw[10:20] = b"}{not dict"                       # inside the header's dict literal
    p.write_bytes(bytes(raw))


def _zip(p):
    with open(p, "wb") as f:
        np.savez(f, x=np.ones((6, 8), np.float32))


def _pickle(p):
    import pickle
    p.write_bytes(pickle.dumps({"features": [1.0, 2.0]}))


BAD_HEADERS = {
    "missing": (None, r"no such feature file"),
    "empty": (lambda p: p.write_bytes(b""), r"the file is empty \(0 bytes\)"),
    "plain_pickle": (_pickle, r"a Python pickle, not a \.npy array \(never loaded"),
    "zip": (_zip, r"a zip archive \(\.npz\?\), not a single \.npy array"),
    "garbage": (lambda p: p.write_bytes(b"\x00\x01garbage" * 20), r"not a \.npy file \(starts with"),
    "corrupt_header": (_corrupt_header, r"not a readable \.npy array: corrupted header"),
    "object_array": (_save(np.array([{"x": 1}] * 6, dtype=object), allow_pickle=True),
                     r"holds a pickled object array, which is never loaded"),
    "truncated": (_truncated, r"truncated: its header announces shape \(6, 8\) float32 \(192 bytes of "
                              r"data\) but the file holds 152"),
    "ndim": (_save(np.ones(6, np.float32)), r"array of shape \(6,\) \(1 dimensions\); expected \(T, D\) "
                                            r"or \(T, C, D\)"),
    "dtype": (_save(np.ones((6, 8), np.int32)), r"dtype int32; expected floating-point features"),
    "zero_T": (_save(np.zeros((0, 8), np.float32)), r"shape \(0, 8\) has T = 0 snippets; expected at least 1"),
    "wrong_D": (_save(np.ones((6, 5), np.float32)), r"feature dimension D = 5 \(shape \(6, 5\)\); expected D = 8"),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_each_bad_header_is_refused_naming_the_file(tmp_path, case, monkeypatch):
    from bnwvad.features import load_features, read_npy_header

    make, message = BAD_HEADERS[case]
    p = tmp_path / f"bad_{case}.npy"
    if make is not None:
        make(p)
    monkeypatch.setattr("pickle.loads", lambda *a, **k: pytest.fail("something was unpickled"))
    for read in (read_npy_header, load_features):      # the loader makes the same checks first
        with pytest.raises(FeatureFileError, match=message) as e:
            read(p, feature_dim=8)
        assert str(e.value).startswith(f"{p}: ")


def test_the_reader_reads_headers_without_data_and_values_on_load(tmp_path):
    from bnwvad.features import load_features, read_npy, read_npy_header

    x = np.arange(6 * 3 * 8, dtype=np.float64).reshape(6, 3, 8)
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    assert read_npy_header(tmp_path / "f.npy") == ((6, 3, 8), np.dtype(np.float64))
    np.testing.assert_array_equal(read_npy(tmp_path / "f.npy"), x)               # order and dtype kept
    got = load_features(tmp_path / "f.npy", feature_dim=8)
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.flags.writeable
    np.testing.assert_array_equal(got, x.astype(np.float32))
    with pytest.raises(FeatureFileError, match=r"array of shape \(6, 3, 8\) \(3 dimensions\); expected \(T, D\)$"):
        read_npy_header(tmp_path / "f.npy", ndim=(2,))
    # Values are the loader's: the header of a file holding NaN is fine, its load is not.
    y = np.ones((4, 8), np.float32)
    y[2, 5] = np.nan
    np.save(tmp_path / "nan.npy", y)
    assert read_npy_header(tmp_path / "nan.npy") == ((4, 8), np.dtype(np.float32))
    with pytest.raises(FeatureFileError, match=r"nan\.npy: contains NaN or inf \(first at index \(2, 5\)\)"):
        load_features(tmp_path / "nan.npy")


# -- checking every file before training (issue #10) ------------------------------------------
def test_check_files_reports_every_bad_file_from_headers(tmp_path, monkeypatch):
    import bnwvad.data as data_mod
    import bnwvad.samples as samples_mod
    from bnwvad.data_checks import check_files

    lf, names = xd_tree(tmp_path, dim=8, crops=2, audio=True)
    audio = AudioSource(tmp_path / "audio")
    normal, abnormal = load_train_samples(lf, tmp_path, audio=audio)
    (tmp_path / "train" / f"{names[0]}__1.npy").unlink()                     # missing
    write(tmp_path / "train" / f"{names[1]}__0.npy", np.ones((9, 5)))           # D = 5, not 8
    write(tmp_path / "audio" / "train" / f"{names[2]}__vggish.npy", np.ones((30, 4)))   # 30 vs 5 snippets
    np.save(tmp_path / "train" / f"{names[3]}__1.npy", np.ones((3, 8), np.int64))   # not float
    write(tmp_path / "train" / f"{names[4]}__0.npy", np.ones((0, 8)))           # T = 0
    # Headers only: no feature data is read.
    for mod in (data_mod, samples_mod):
        monkeypatch.setattr(mod, "load_features", lambda *a, **k: pytest.fail("data was read"))
    check = check_files(normal, abnormal, feature_dim=8 + 4, audio=AudioSource(tmp_path / "audio", dim=4))
    text = "\n".join(check.problems)
    assert len(check.problems) == 5, text
    assert f"{names[0]}__1.npy: no such feature file" in text
    assert f"{names[1]}__0.npy: feature dimension D = 5" in text and "expected D = 8" in text
    assert f"{names[2]}__vggish.npy: 30 audio snippets" in text
    assert f"{names[3]}__1.npy: dtype int64" in text
    assert f"{names[4]}__0.npy: shape (0, 8) has T = 0" in text
    assert check.checked == 6 * 2 + 6 and check.train_crops == 2


def test_check_files_counts_crops_and_checks_test_videos(tmp_path):
    from bnwvad.data_checks import check_files

    lf, names = xd_tree(tmp_path, dim=8, crops=3)
    normal, abnormal = load_train_samples(lf, tmp_path)
    test = load_test_videos(lf, tmp_path)
    check = check_files(normal, abnormal, test, feature_dim=8)
    assert check.problems == [] and (check.train_crops, check.test_crops, check.crops) == (3, 3, 3)
    write(tmp_path / "train" / f"{names[0]}__2.npy", np.ones((99, 8)))      # crops of a test video disagree
    check = check_files(normal, abnormal, load_test_videos(lf, tmp_path), feature_dim=8)
    assert any(f"{names[0]}__2.npy: shape (99, 8), but" in p for p in check.problems)


def test_loading_collects_problems_instead_of_stopping_at_the_first(tmp_path):
    from bnwvad.data_checks import MAX_NAMED, DataCheckError

    lf, names = xd_tree(tmp_path, dim=8, crops=2, audio=True)
    for n in names[:2]:
        (tmp_path / "audio" / "train" / f"{n}__vggish.npy").unlink()
    problems: list[str] = []
    normal, abnormal = load_train_samples(lf, tmp_path, audio=AudioSource(tmp_path / "audio"), problems=problems)
    assert len(problems) == 2 and all("no audio features found" in p for p in problems)
    assert {s.video for s in normal + abnormal} == set(names[2:])
    err = DataCheckError([f"f{i}: bad" for i in range(MAX_NAMED + 3)], checked=40)
    assert f"{MAX_NAMED + 3} of the 40 feature files" in str(err) and "... and 3 more" in str(err)
    assert "f0: bad" in str(err) and f"f{MAX_NAMED}: bad" not in str(err)


def test_the_fingerprint_does_not_depend_on_where_the_data_is(tmp_path, monkeypatch):
    import shutil

    from bnwvad.data import fingerprint, legacy_fingerprint

    lf, _ = xd_tree(tmp_path / "a", dim=8)
    here = fingerprint(load_train_samples(lf, tmp_path / "a")[0])
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    moved = load_train_samples(tmp_path / "b" / "list" / "XD_Train.list", tmp_path / "b")[0]
    assert fingerprint(moved) == here
    monkeypatch.chdir(tmp_path)
    relative = load_train_samples(Path("a/list/XD_Train.list"), Path("a"))[0]
    assert fingerprint(relative) == here and legacy_fingerprint(relative) != legacy_fingerprint(moved)
    assert fingerprint(relative[::-1]) != here                # order and content still count
