"""Optimisers for the steering parameters and the proximal sparse-group-lasso step centred at the
identity (w = 1, b = 0)."""

from __future__ import annotations

import math
from typing import Iterable

import torch

from .errors import LineasError
from .steering import Steering

__all__ = ["make_optimizer", "cosine_schedule", "prox_sparse_group_lasso_", "soft_threshold"]


def make_optimizer(params: Iterable[torch.nn.Parameter], name: str = "sgd", lr: float = 0.1,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """``sgd`` (the paper's LLM setting), ``adam`` or ``adamw`` (its text-to-image setting)."""
    params = list(params)
    name = name.lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise LineasError(f"optimizer must be 'sgd', 'adam' or 'adamw', got {name!r}")


def cosine_schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: int = 0, floor: float = 0.0):
    """Linear warm-up for ``warmup`` steps, then cosine decay to ``floor`` x lr at ``steps``."""

    def factor(i: int) -> float:
        if warmup and i < warmup:
            return (i + 1) / warmup
        t = (i - warmup) / max(1, steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def soft_threshold(x: torch.Tensor, t: float) -> torch.Tensor:
    """sign(x) * max(|x| - t, 0), the prox of t * ||x||_1."""
    return torch.sign(x) * torch.clamp(x.abs() - t, min=0)


@torch.no_grad()
def prox_sparse_group_lasso_(steering: Steering, tau: float, gamma: float, l1: float = 1.0,
                             group: float = 1.0) -> None:
    """Prox of tau * gamma * (l1 * (||w - 1||_1 + ||b||_1) + group * sum_l sqrt(d_l) ||(w_l - 1, b_l)||_2),
    in place: soft-threshold every coordinate, then shrink each site's group towards the identity
    (the sparse-group-lasso prox is exactly this composition)."""
    if gamma <= 0 or tau <= 0:
        return
    for site, spec in steering.specs.items():
        w, b = steering.weight(site), steering.bias(site)
        dw = soft_threshold(w - 1, tau * gamma * l1)
        db = soft_threshold(b, tau * gamma * l1)
        if group > 0:
            t = tau * gamma * group * math.sqrt(spec.dim)
            norm = torch.sqrt(dw.pow(2).sum() + db.pow(2).sum())
            k = torch.clamp(1 - t / norm, min=0) if norm > 0 else torch.zeros(())
            dw, db = dw * k, db * k
        w.copy_(1 + dw)
        b.copy_(db)
