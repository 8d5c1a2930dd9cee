"""BN folding: BNWVAD -> the inference ("deploy") model, a pure function on a copy.

The deploy model computes the same function as `BNWVAD.forward` in eval mode, with the
constant work done once, here, in float64:

- Normal head: each hidden layer l is ONE matmul giving z_l directly. For the default
  Mahalanobis DFM, z_l = (h_l - mu_l) / sqrt(var_l) (running statistics, no eps, as the
  DFM has none), so DFM_l = ||z_l|| and the BN output is the elementwise affine
  gamma * sqrt(var) / sqrt(var + eps) * z + beta = BN(h_l) exactly. The Euclidean
  (z = h - mu) and cosine (z = h) ablations fold the same way with their own affine.
- Embedding: Conv1d(k=3, pad=1) as one (D, 3E) matmul followed by a shift-add over time
  (y[t] = Y0[t-1] + Y1[t] + Y2[t+1] + b), so it is one large GEMM instead of a
  per-video convolution.
- Attention: the 1/sqrt(head_dim) scale is folded into the query weights; the output
  projection's columns for the temporal branch are folded into that branch's value
  weights: G (x Wt) Wp2 = G (x (Wt Wp2)), one E x E matmul less per block.

`fold(model)` never touches its argument (it works from a state_dict copy).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnwvad.config import ModelConfig
from bnwvad.model import BNWVAD, temporal_kernel

# cosine_similarity's default eps (torch.nn.functional.cosine_similarity).
COSINE_EPS = 1e-8


class FoldError(ValueError):
    """A model whose BatchNorm statistics cannot be folded, with the reason."""


@dataclass
class HeadLayer:
    """One folded hidden layer: z = a @ weight + bias; BN(h) = z * scale + shift."""

    weight: Tensor      # (C_in, C_l)
    bias: Tensor        # (C_l,)
    scale: Tensor       # (C_l,)
    shift: Tensor       # (C_l,)
    mean: Tensor        # (C_l,) running mean: used by the cosine DFM only (z = h there)


def _f64(t: Tensor) -> Tensor:
    return t.detach().to("cpu", torch.float64)


def _fold_head_layer(conv: nn.Conv1d, bn: nn.BatchNorm1d, kind: str, where: str) -> HeadLayer:
    w = _f64(conv.weight)[:, :, 0]                       # (C_l, C_in)
    b = _f64(conv.bias) if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    mu, var = _f64(bn.running_mean), _f64(bn.running_var)
    gamma = _f64(bn.weight) if bn.weight is not None else torch.ones_like(mu)
    beta = _f64(bn.bias) if bn.bias is not None else torch.zeros_like(mu)
    if not torch.isfinite(var).all() or not torch.isfinite(mu).all():
        raise FoldError(f"{where}: running statistics hold non-finite values; expected finite "
                        f"mean and variance from a trained model")
    bad = (var <= 0).nonzero().flatten().tolist()
    if kind == "mahalanobis" and bad:
        raise FoldError(f"{where}: running_var is <= 0 at channels {bad[:8]}: the Mahalanobis DFM "
                        f"divides by sqrt(var) without eps, so it would be infinite; expected a "
                        f"positive variance (is this a trained model?)")
    bn_gain = gamma / torch.sqrt(var + bn.eps)           # BN(h) = bn_gain * (h - mu) + beta
    if kind == "mahalanobis":
        # z = (h - mu) / sigma: fold 1/sigma into the conv, so BN(h) = bn_gain * sigma * z + beta.
        sigma = torch.sqrt(var)
        weight, bias = w / sigma[:, None], (b - mu) / sigma
        scale, shift = bn_gain * sigma, beta
    elif kind == "euclidean":
        weight, bias = w.clone(), b - mu                 # z = h - mu
        scale, shift = bn_gain, beta
    elif kind == "cosine":
        weight, bias = w.clone(), b.clone()              # z = h: the cosine needs h itself
        scale, shift = bn_gain, beta - bn_gain * mu
    else:
        raise FoldError(f"distance {kind!r} cannot be folded; expected mahalanobis, euclidean or cosine")
    f32 = dict(dtype=torch.float32)
    return HeadLayer(weight.t().contiguous().to(**f32), bias.to(**f32), scale.to(**f32),
                     shift.to(**f32), mu.to(**f32))


class DeployBlock(nn.Module):
    """A pre-norm enhancer block with the folded attention weights.

    w_qkvu (E, 4E) maps LN(x) to [q * dh^-0.5 | k | v | u], u = LN(x) Wt Wp2 (the temporal
    branch already projected); w_o (E, E) projects the softmax branch only.
    """

    def __init__(self, block, heads: int, head_dim: int):
        super().__init__()
        e = block.attn_norm.normalized_shape[0]
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.ln1_w, self.ln1_b = _param(block.attn_norm.weight), _param(block.attn_norm.bias)
        self.ln2_w, self.ln2_b = _param(block.ff_norm.weight), _param(block.ff_norm.bias)
        self.ln_eps = float(block.attn_norm.eps)
        self.ln2_eps = float(block.ff_norm.eps)
        wqkvt = _f64(block.attn.qkvt.weight)             # (4 * inner, E): rows q, k, v, t
        wq, wk, wv, wt = wqkvt.split(inner, dim=0)       # each (inner, E), head-major rows
        wp = _f64(block.attn.proj.weight)                # (E, 2 * inner): per head [branch1 | branch2]
        cols = torch.arange(2 * inner).view(heads, 2, head_dim)
        wp1 = wp[:, cols[:, 0].reshape(-1)]              # (E, inner), softmax branch, head order
        wp2 = wp[:, cols[:, 1].reshape(-1)]              # (E, inner), temporal branch, head order
        wu = wp2 @ wt                                    # (E, E): x -> u = x Wt^T Wp2^T
        w_qkvu = torch.cat([wq * head_dim ** -0.5, wk, wv, wu], dim=0)   # (3 * inner + E, E)
        self.w_qkvu = _param(w_qkvu.t())                 # (E, 3 * inner + E)
        self.w_o = _param(wp1.t())                       # (inner, E)
        self.b_o = _param(block.attn.proj.bias)
        self.fc1_w, self.fc1_b = _param(_f64(block.ff.fc1.weight).t()), _param(block.ff.fc1.bias)
        self.fc2_w, self.fc2_b = _param(_f64(block.ff.fc2.weight).t()), _param(block.ff.fc2.bias)
        self.inner, self.embed = inner, e

    def forward(self, x: Tensor, key_mask: Tensor, g: Tensor, crops: int) -> Tensor:
        """x (B, T, E), key_mask (B, T) bool, g (N, T, T) with B = N * crops."""
        b, t, e = x.shape
        h, dh = self.heads, self.head_dim
        y = F.layer_norm(x, (e,), self.ln1_w, self.ln1_b, self.ln_eps)
        q, k, v, u = (y @ self.w_qkvu).split([self.inner] * 3 + [e], dim=-1)
        q, k, v = (z.view(b, t, h, dh).transpose(1, 2) for z in (q, k, v))   # (B, h, T, dh)
        dots = q @ k.transpose(-1, -2)                                     # (B, h, T, T)
        dots = dots.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        out1 = (dots.softmax(-1) @ v).transpose(1, 2).reshape(b, t, self.inner)
        out2 = (g[:, None] @ u.view(-1, crops, t, e)).view(b, t, e)        # (N, C, T, E)
        x = x + (out1 @ self.w_o + out2 + self.b_o)
        y = F.layer_norm(x, (e,), self.ln2_w, self.ln2_b, self.ln2_eps)
        return x + (F.gelu(y @ self.fc1_w + self.fc1_b) @ self.fc2_w + self.fc2_b)


def _param(t: Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().to("cpu", torch.float32).contiguous().clone(), requires_grad=False)


def temporal_weights(mask: Tensor) -> Tensor:
    """G of each video from its snippet mask (N, T) -> (N, T, T).

    G[i, j] = K[i, j] / s[j], s[j] = sum over real k of K[j, k], and 0 for padded j:
    the same elementwise division the model does, so the rounding is the same.
    """
    t = mask.shape[1]
    kern = temporal_kernel(t, mask.device, torch.float32)                 # (T, T)
    s = mask.to(torch.float32) @ kern                                     # (N, T), s >= 1
    return torch.where(mask[:, None, :], kern / s[:, None, :], 0.0)


class DeployModel(nn.Module):
    """The folded inference model: features (N, C, T, D) f32, lengths (N,) i64 ->
    (score, dfm, anomaly), each (N, T), the crop means, as `BNWVAD.forward`.

    Every weight is stored in the layout the ONNX graph uses (inputs times weight),
    so `bnwvad.export.graph` emits this module's tensors unchanged.
    """

    def __init__(self, model: BNWVAD):
        super().__init__()
        cfg = copy.deepcopy(model.config)
        self.config: ModelConfig = cfg
        w = _f64(model.embed.weight)                     # (E, D, 3)
        self.embed_w = _param(torch.cat([w[:, :, k].t() for k in range(3)], dim=1))  # (D, 3E)
        self.embed_b = _param(model.embed.bias)
        self.blocks = nn.ModuleList(DeployBlock(b, cfg.heads, cfg.head_dim) for b in model.blocks)
        self.head_layers = [
            _fold_head_layer(conv, bn, cfg.distance, f"head layer {i + 1} (head.bns.{i})")
            for i, (conv, bn) in enumerate(zip(model.head.convs, model.head.bns))]
        for i, layer in enumerate(self.head_layers):
            for name in ("weight", "bias", "scale", "shift", "mean"):
                self.register_buffer(f"head{i}_{name}", getattr(layer, name))
        self.out_w = _param(_f64(model.head.out.weight)[:, :, 0].t())        # (C_last, 1)
        self.out_b = _param(model.head.out.bias)

    def divergence(self, z: Tensor, layer: HeadLayer) -> Tensor:
        """DFM of one layer from its folded z (..., C_l) -> (...)."""
        if self.config.distance == "cosine":
            num = (z * layer.mean).sum(-1)
            den = (torch.linalg.vector_norm(z, dim=-1).clamp_min(COSINE_EPS)
                   * torch.linalg.vector_norm(layer.mean).clamp_min(COSINE_EPS))
            return 1.0 - num / den
        return torch.sqrt((z * z).sum(-1))

    def per_crop(self, features: Tensor, lengths: Tensor | None = None):
        n, c, t, d = features.shape
        if lengths is None:
            lengths = torch.full((n,), t, dtype=torch.int64, device=features.device)
        mask = torch.arange(t, device=features.device)[None, :] < lengths[:, None]   # (N, T)
        x = torch.where(mask[:, None, :, None], features, 0.0).reshape(n * c, t, d)
        e = self.embed_b.shape[0]
        y0, y1, y2 = (x @ self.embed_w).split(e, dim=-1)                  # 3 x (B, T, E)
        # Conv1d(k=3, pad=1): out[t] = W0 x[t-1] + W1 x[t] + W2 x[t+1] + b.
        x = F.relu(y1 + F.pad(y0[:, :-1], (0, 0, 1, 0)) + F.pad(y2[:, 1:], (0, 0, 0, 1)) + self.embed_b)
        key_mask = mask.repeat_interleave(c, dim=0)                       # (B, T)
        g = temporal_weights(mask)                                        # (N, T, T)
        for block in self.blocks:
            x = block(x, key_mask, g, c)
        dfm = 0.0
        a = x
        for layer in self.head_layers:
            z = a @ layer.weight + layer.bias                             # (B, T, C_l)
            dfm = dfm + self.divergence(z, layer)
            a = F.relu(z * layer.scale + layer.shift)
        score = torch.sigmoid(a @ self.out_w + self.out_b)[..., 0]        # (B, T)
        anomaly = {"product": score * dfm, "classifier": score, "dfm": dfm}[self.config.score]
        return tuple(o.view(n, c, t) for o in (score, dfm, anomaly))

    def forward(self, features: Tensor, lengths: Tensor | None = None):
        return tuple(o.mean(1) for o in self.per_crop(features, lengths))

    def _apply(self, fn, *args, **kwargs):
        # Keep the HeadLayer views on the registered buffers after .to(device).
        out = super()._apply(fn, *args, **kwargs)
        for i, layer in enumerate(self.head_layers):
            for name in ("weight", "bias", "scale", "shift", "mean"):
                setattr(layer, name, getattr(self, f"head{i}_{name}"))
        return out


def fold(model: BNWVAD) -> DeployModel:
    """The folded deploy model of `model` (eval-mode function); `model` is left untouched."""
    if not isinstance(model, BNWVAD):
        raise TypeError(f"fold() expects a bnwvad.model.BNWVAD, got {type(model).__name__}")
    device = next(model.parameters()).device
    src = copy.deepcopy(model).cpu().eval()
    return DeployModel(src).to(device).eval()


__all__ = ["DeployModel", "FoldError", "fold", "temporal_weights"]
