"""The BN-WVAD model: temporal embedding, the two-branch enhancer, the normal head, DFM.

The numerics follow DESIGN.md ("The model, exactly") and reproduce the published
code's outputs; parameter shapes equal the published ones, so a published state_dict
loads after a pure renaming of its keys (`bnwvad.checkpoint.convert_official`).

Shapes: N videos, C crops, T snippets, D feature dim, E = embed_dim, B = N * C rows.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .selection import select_pairs


class ModelOutput(NamedTuple):
    """Per-snippet outputs, each (N, T) after the crop mean or (N, C, T) per crop."""

    score: Tensor      # classifier output (sigmoid)
    dfm: Tensor        # sum over hidden layers of the divergence from the BN mean
    anomaly: Tensor    # the anomaly score chosen by config.score (default score * dfm)


def temporal_kernel(length: int, device=None, dtype=torch.float32) -> Tensor:
    """exp(-|i - j| / e) over snippet indices, (T, T); symmetric, ones on the diagonal.

    e is float32 exp(1), as the published code computes it.
    """
    pos = torch.arange(length, device=device, dtype=dtype)
    e = torch.exp(torch.tensor(1.0, device=device, dtype=dtype))
    return torch.exp(-(pos[None, :] - pos[:, None]).abs() / e)


def divergence(h: Tensor, mean: Tensor, var: Tensor, kind: str = "mahalanobis") -> Tensor:
    """DFM of hidden features h (..., C) from the BN running statistics -> (...).

    Mahalanobis with a diagonal covariance and no eps (as published); the Euclidean and
    cosine variants are the paper's Table 7 ablation.
    """
    if kind == "mahalanobis":
        return torch.sqrt(torch.sum((h - mean) ** 2 / var, dim=-1))
    if kind == "euclidean":
        return torch.sqrt(torch.sum((h - mean) ** 2, dim=-1))
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(h, mean.expand_as(h), dim=-1)
    raise ValueError(f"unknown distance {kind!r}")


class Attention(nn.Module):
    """Softmax self-attention beside a fixed temporal-distance branch, per head."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkvt = nn.Linear(dim, 4 * heads * head_dim, bias=False)
        self.proj = nn.Linear(2 * heads * head_dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        b, t, _ = x.shape
        h, dh = self.heads, self.head_dim
        # (B, T, 4*h*dh) -> 4 x (B, h, T, dh): chunks q, k, v, t, each split into heads.
        q, k, v, tv = self.qkvt(x).view(b, t, 4, h, dh).permute(2, 0, 3, 1, 4)

        dots = torch.matmul(q, k.transpose(-1, -2)) * dh ** -0.5     # (B, h, T, T)
        if mask is not None:
            dots = dots.masked_fill(~mask[:, None, None, :], float("-inf"))
        out1 = torch.matmul(dots.softmax(dim=-1), v)

        # G[i, j] = K[i, j] / s[j], s[j] = sum_k K[j, k] over the video's real snippets
        # (K symmetric, so s is also a row sum). Computed as the published code does,
        # by elementwise division, to reproduce its rounding.
        kern = temporal_kernel(t, x.device, x.dtype)                  # (T, T)
        if mask is None:
            g = kern / kern.sum(-1)                                   # (T, T)
        else:
            m = mask.to(x.dtype)                                      # (B, T)
            s = m @ kern                                              # (B, T), s[j] >= 1
            g = torch.where(mask[:, None, :], kern / s[:, None, :], 0.0)[:, None]  # (B, 1, T, T)
        out2 = torch.matmul(g, tv)
        out = torch.cat([out1, out2], dim=-1)                         # (B, h, T, 2*dh)
        return self.proj(out.transpose(1, 2).reshape(b, t, 2 * h * dh))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm enhancer block: x + Attn(LN(x)), then x + FF(LN(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.attn = Attention(cfg.embed_dim, cfg.heads, cfg.head_dim)
        self.ff_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.ff = FeedForward(cfg.embed_dim, cfg.mlp_dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.attn_norm(x), mask)
        return x + self.ff(self.ff_norm(x))


class NormalHead(nn.Module):
    """Conv1x1 -> BN -> ReLU per hidden layer, then Conv1x1 -> sigmoid.

    Weights keep the published Conv1d shapes (out, in, 1).
    """

    def __init__(self, in_dim: int, hidden_dims: tuple[int, ...], eps: float, momentum: float):
        super().__init__()
        dims = (in_dim, *hidden_dims)
        self.convs = nn.ModuleList(nn.Conv1d(dims[i], dims[i + 1], 1) for i in range(len(hidden_dims)))
        self.bns = nn.ModuleList(nn.BatchNorm1d(d, eps=eps, momentum=momentum) for d in hidden_dims)
        self.out = nn.Conv1d(dims[-1], 1, 1)

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """x (B, T, E) -> hidden pre-BN features [(B, T, C_l)] and the score (B, T).

        Runs channels-first (B, C, T) like the published Conv1d/BatchNorm1d code: in train
        mode the BN backward sums nearly cancelling terms, and this layout reproduces the
        published gradients far closer than a flattened (B*T, C) BatchNorm does.
        """
        x = x.transpose(1, 2)                                         # (B, E, T)
        hs = []
        for conv, bn in zip(self.convs, self.bns):
            h = conv(x)                                               # (B, C_l, T)
            hs.append(h.transpose(1, 2))
            x = F.relu(bn(h))
        score = torch.sigmoid(self.out(x)).squeeze(1)                 # (B, T)
        return hs, score


class BNWVAD(nn.Module):
    """BN-WVAD. `forward` scores videos; `loss` is the training objective."""

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config or ModelConfig()
        c = self.config
        self.embed = nn.Conv1d(c.feature_dim, c.embed_dim, kernel_size=3, padding=1)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.depth))
        self.head = NormalHead(c.embed_dim, c.hidden_dims, c.bn_eps, c.bn_momentum)

    # -- shared trunk ---------------------------------------------------------------
    def enhance(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, T, D) features -> (B, T, E) enhanced features X^e.

        mask (B, T) marks real snippets; padded rows are zeroed first so the temporal
        convolution sees the same zeros its own padding would give an unpadded video.
        """
        if mask is not None:
            x = torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        x = F.relu(self.embed(x.transpose(1, 2))).transpose(1, 2)
        for block in self.blocks:
            x = block(x, mask)
        return x

    def divergences(self, hs: list[Tensor]) -> list[Tensor]:
        """DFM_l of each hidden layer from its BN's (current) running statistics."""
        return [divergence(h, bn.running_mean, bn.running_var, self.config.distance)
                for h, bn in zip(hs, self.head.bns)]

    # -- inference ------------------------------------------------------------------
    def per_crop(self, features: Tensor, lengths: Tensor | None = None) -> ModelOutput:
        """features (N, C, T, D), lengths (N,) or None -> outputs per crop, each (N, C, T).

        Values past a video's length are not defined.
        """
        if features.dim() != 4:
            raise ValueError(f"features must be (N, C, T, D), got shape {tuple(features.shape)}")
        n, c, t, d = features.shape
        if d != self.config.feature_dim:
            raise ValueError(f"features have D={d}, the model expects D={self.config.feature_dim}")
        mask = None
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=features.device)
            if lengths.shape != (n,):
                raise ValueError(f"lengths must be ({n},), got shape {tuple(lengths.shape)}")
            if bool((lengths < 1).any()) or bool((lengths > t).any()):
                raise ValueError(f"lengths must lie in [1, {t}], got {lengths.tolist()}")
            mask = torch.arange(t, device=features.device)[None, :] < lengths.repeat_interleave(c)[:, None]
        hs, score = self.head(self.enhance(features.reshape(n * c, t, d), mask))
        dfm = torch.stack(self.divergences(hs)).sum(0)                # (B, T)
        anomaly = {"product": score * dfm, "classifier": score, "dfm": dfm}[self.config.score]
        return ModelOutput(*(o.view(n, c, t) for o in (score, dfm, anomaly)))

    def forward(self, features: Tensor, lengths: Tensor | None = None) -> ModelOutput:
        """features (N, C, T, D) -> crop-mean score, dfm, anomaly, each (N, T)."""
        return ModelOutput(*(o.mean(1) for o in self.per_crop(features, lengths)))

    # -- training -------------------------------------------------------------------
    def loss(self, normal: Tensor, abnormal: Tensor) -> dict:
        """The training objective on one batch (train mode; updates BN running stats).

        normal (Bn, T, D), abnormal (Ba, T, D): one crop each, resampled to a common T.
        Returns total, normal, mpp (weighted sum), mpp_per_layer (unweighted),
        n_selected (abnormal snippets selected in the first hidden layer) and
        n_selected_per_layer.
        """
        if not self.training:
            raise RuntimeError("loss() updates the BatchNorm statistics: call model.train() first")
        if normal.dim() != 3 or abnormal.dim() != 3 or normal.shape[1:] != abnormal.shape[1:]:
            raise ValueError(f"normal and abnormal must be (B, T, D) with the same T and D, got "
                             f"{tuple(normal.shape)} and {tuple(abnormal.shape)}")
        cfg = self.config
        bn_ = normal.shape[0]
        hs, score = self.head(self.enhance(torch.cat([normal, abnormal])))
        # BN has updated its running statistics: the DFMs below use the updated ones.
        with torch.no_grad():
            dists = self.divergences(hs)                              # L x (Bn + Ba, T)

        normal_loss = torch.linalg.vector_norm(score[:bn_], dim=1).mean()
        mpp_layers, counts = [], []
        for h, d, bn in zip(hs, dists, self.head.bns):
            with torch.no_grad():
                (nv, nt), (av, at) = select_pairs(d[:bn_], d[bn_:], cfg.ratio_sample,
                                                  cfg.ratio_batch, cfg.selection)
            counts.append(int(av.numel()))
            if av.numel() == 0:
                mpp_layers.append(h.sum() * 0.0)      # nothing selected: no pull-push
                continue
            # Distances recomputed on the gathered (n, C) rows, as the published loss
            # does: same values, and the same rounding in the backward pass.
            d_nor = divergence(h[:bn_][nv, nt], bn.running_mean, bn.running_var, cfg.distance)
            d_abn = divergence(h[bn_:][av, at], bn.running_mean, bn.running_var, cfg.distance)
            mpp_layers.append(F.relu(cfg.margin + d_nor - d_abn).mean())
        mpp = sum(w * m for w, m in zip(cfg.w_mpp, mpp_layers))
        return {
            "total": cfg.w_normal * normal_loss + mpp,
            "normal": normal_loss,
            "mpp": mpp,
            "mpp_per_layer": mpp_layers,
            "n_selected": counts[0],
            "n_selected_per_layer": counts,
        }

    def num_flops(self, length: int, crops: int = 1) -> int:
        """Multiply-adds x 2 for one video of `length` snippets and `crops` crops."""
        c, t = self.config, length
        e, inner = c.embed_dim, c.heads * c.head_dim
        per_row = 3 * c.feature_dim * e                               # temporal conv
        per_row += c.depth * (e * 4 * inner + 2 * inner * e + 2 * e * c.mlp_dim)
        per_row += c.depth * (3 * t * inner)                         # q k^T, attn v, G t
        dims = (e, *c.hidden_dims, 1)
        per_row += sum(a * b for a, b in zip(dims[:-1], dims[1:]))
        return int(2 * per_row * t * crops)


def build_model(config: ModelConfig | None = None, device: str | torch.device = "cpu") -> BNWVAD:
    return BNWVAD(config).to(device)


__all__ = ["BNWVAD", "ModelOutput", "build_model", "divergence", "temporal_kernel"]
