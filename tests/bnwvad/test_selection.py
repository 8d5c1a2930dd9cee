"""SLS / BLS / SBS and the normal-side pairing, checked by hand (paper Fig. 4 layout)."""
import pytest
import torch

from bnwvad.selection import select_abnormal, select_normal, select_pairs, selection_counts

# B = 4 abnormal videos, T = 5 snippets, rho_s = rho_b = 40%: k_s = 2, k_b = 8.
# Video 0 has only inconspicuous anomalies (0.3, 0.4); video 3 is anomalous throughout.
ABN = torch.tensor([
    [0.10, 0.30, 0.40, 0.20, 0.05],
    [0.95, 0.85, 0.25, 0.15, 0.22],
    [0.50, 0.92, 0.88, 0.12, 0.18],
    [0.90, 0.60, 0.80, 0.70, 0.11],
])
NOR = torch.tensor([
    [0.1, 0.5, 0.3, 0.2, 0.4],
    [0.9, 0.1, 0.2, 0.3, 0.8],
    [0.2, 0.3, 0.6, 0.7, 0.1],
    [0.4, 0.9, 0.8, 0.1, 0.2],
])


def cells(mask):
    return sorted(map(tuple, mask.nonzero().tolist()))


def test_counts_use_the_published_float_arithmetic():
    assert selection_counts(4, 5, 0.4, 0.4) == (2, 8)
    assert selection_counts(4, 40, 0.2, 0.4) == (8, 64)     # 4 * 40 * 0.4 = 64.00000000000001
    assert selection_counts(64, 200, 0.1, 0.2) == (20, 2560)
    assert selection_counts(3, 10, 0.0, 0.0) == (0, 0)


def test_sls_takes_top_two_of_every_video_and_misses_video_3():
    assert cells(select_abnormal(ABN, 0.4, 0.4, "sls")) == [
        (0, 1), (0, 2), (1, 0), (1, 1), (2, 1), (2, 2), (3, 0), (3, 2)]


def test_bls_takes_top_eight_of_the_batch_and_misses_video_0():
    assert cells(select_abnormal(ABN, 0.4, 0.4, "bls")) == [
        (1, 0), (1, 1), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2), (3, 3)]


def test_sbs_is_the_union():
    assert cells(select_abnormal(ABN, 0.4, 0.4, "sbs")) == [
        (0, 1), (0, 2), (1, 0), (1, 1), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2), (3, 3)]


def test_normal_side_is_rank_major_and_truncated_to_n():
    video, time = select_normal(NOR, 10)       # k = 10 // 4 + 1 = 3 per video
    assert list(zip(video.tolist(), time.tolist())) == [
        (0, 1), (1, 0), (2, 3), (3, 1),          # every video's largest
        (0, 4), (1, 4), (2, 2), (3, 2),          # every video's second
        (0, 2), (1, 3)]                          # third, cut at n = 10


def test_pairs_are_in_video_time_order_on_the_abnormal_side():
    (nv, nt), (av, at) = select_pairs(NOR, ABN, 0.4, 0.4, "sbs")
    assert len(nv) == len(av) == 10
    assert list(zip(av.tolist(), at.tolist())) == [
        (0, 1), (0, 2), (1, 0), (1, 1), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2), (3, 3)]


def test_zero_ratios_select_nothing():
    assert select_abnormal(ABN, 0.0, 0.0, "sbs").sum() == 0
    (nv, _), (av, _) = select_pairs(NOR, ABN, 0.0, 0.0)
    assert len(nv) == len(av) == 0


def test_everything_selected_still_pairs():
    (nv, nt), (av, at) = select_pairs(NOR, ABN, 1.0, 1.0)
    assert len(av) == 20 and len(nv) == 20
    assert len(set(zip(nv.tolist(), nt.tolist()))) == 20


def test_fewer_normal_snippets_than_selected_is_an_error():
    with pytest.raises(ValueError, match="normal half has only"):
        select_normal(NOR[:1], 10)


def test_unknown_strategy():
    with pytest.raises(ValueError, match="strategy"):
        select_abnormal(ABN, 0.4, 0.4, "xyz")
