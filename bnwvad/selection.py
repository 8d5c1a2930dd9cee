"""Snippet selection for the MPP loss: SLS, BLS and their union SBS (paper Sec. 3.3).

Plain functions on (B, T) tensors of per-snippet divergences, so they can be tested by
hand (paper Fig. 4). The counts and the order of the selected snippets follow the
published code exactly, because the MPP loss pairs normal and abnormal snippets index
by index and so depends on that order.
"""
from __future__ import annotations

import torch
from torch import Tensor


def selection_counts(batch: int, length: int, ratio_sample: float,
                     ratio_batch: float) -> tuple[int, int]:
    """(k_s, k_b): top snippets per video and over the whole abnormal half.

    Same float arithmetic as the published code: int(T * rho_s), int(B * T * rho_b)
    with B * T formed first, so e.g. 4 * 40 * 0.4 -> 64.
    """
    return int(length * ratio_sample), int(batch * length * ratio_batch)


def select_abnormal(dist: Tensor, ratio_sample: float, ratio_batch: float,
                    strategy: str = "sbs") -> Tensor:
    """Mask (B, T) of the abnormal videos' snippets chosen as likely anomalous.

    dist: (B, T) divergence of each snippet of the abnormal half. SLS keeps the top
    k_s snippets of each video, BLS the top k_b over the batch, SBS their union.
    Reading the mask in row-major order gives the (video, time) order the loss uses.
    """
    if dist.dim() != 2:
        raise ValueError(f"dist must be (B, T), got shape {tuple(dist.shape)}")
    b, t = dist.shape
    k_s, k_b = selection_counts(b, t, ratio_sample, ratio_batch)
    k_s, k_b = min(k_s, t), min(k_b, b * t)
    mask = torch.zeros_like(dist, dtype=torch.bool)
    if strategy in ("sbs", "sls") and k_s > 0:
        mask.scatter_(1, torch.topk(dist, k_s, dim=-1).indices, True)
    if strategy in ("sbs", "bls") and k_b > 0:
        flat = torch.zeros(b * t, dtype=torch.bool, device=dist.device)
        flat[torch.topk(dist.reshape(-1), k_b).indices] = True
        mask |= flat.view(b, t)
    if strategy not in ("sbs", "sls", "bls"):
        raise ValueError(f"strategy={strategy!r}: expected 'sbs', 'sls' or 'bls'")
    return mask


def select_normal(dist: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The n normal snippets paired with n selected abnormal ones: (video, time) indices.

    Each normal video contributes its top floor(n / B) + 1 snippets, ranked descending;
    they are laid out rank-major (every video's first, then every video's second, ...)
    and the first n are kept.
    """
    b, t = dist.shape
    if n > b * t:
        raise ValueError(f"{n} abnormal snippets selected but the normal half has only "
                         f"{b} x {t} = {b * t} snippets to pair them with; use at least as "
                         f"many normal videos as abnormal ones")
    k = min(n // b + 1, t)
    top = torch.topk(dist, k, dim=-1).indices                  # (B, k), descending
    time = top.t().reshape(-1)[:n]                              # rank-major
    video = torch.arange(b, device=dist.device).repeat(k)[:n]
    return video, time


def select_pairs(dist_normal: Tensor, dist_abnormal: Tensor, ratio_sample: float,
                 ratio_batch: float, strategy: str = "sbs"
                 ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Indices of the paired (normal, abnormal) snippets for one hidden layer.

    Returns ((normal_video, normal_time), (abnormal_video, abnormal_time)), n each.
    """
    mask = select_abnormal(dist_abnormal, ratio_sample, ratio_batch, strategy)
    abn_video, abn_time = mask.nonzero(as_tuple=True)           # (video, time) order
    nor = select_normal(dist_normal, int(abn_video.numel()))
    return nor, (abn_video, abn_time)
