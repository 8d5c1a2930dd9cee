"""The published optimisation step: Adam (L2 weight decay) after clipping the gradient norm."""
from __future__ import annotations

import torch

from .config import TrainConfig
from .model import BNWVAD


def make_optimizer(model: BNWVAD, cfg: TrainConfig | None = None) -> torch.optim.Adam:
    cfg = cfg or TrainConfig()
    # torch.optim.Adam's weight_decay adds wd * param to the gradient (L2), as published.
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                            weight_decay=cfg.weight_decay)


def train_step(model: BNWVAD, optimizer: torch.optim.Optimizer, normal: torch.Tensor,
               abnormal: torch.Tensor, grad_clip: float = 1.0) -> dict:
    """One iteration: loss, backward, clip the total gradient norm, Adam step.

    Returns the loss dict plus "grad_norm" (the norm before clipping), all as Python
    numbers except the tensors under "mpp_per_layer".
    """
    model.train()
    losses = model.loss(normal, abnormal)
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    out = {k: (float(v.detach()) if torch.is_tensor(v) else v) for k, v in losses.items()
           if k != "mpp_per_layer"}
    out["mpp_per_layer"] = [float(v.detach()) for v in losses["mpp_per_layer"]]
    out["grad_norm"] = float(grad_norm)
    return out
