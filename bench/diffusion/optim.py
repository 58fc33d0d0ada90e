"""Optimiser pieces shared by the VAE and UNet trainers: AdamW with linear warm-up then cosine decay to
``floor`` x lr, and an exponential moving average of the weights."""

from __future__ import annotations

import torch

from lineas_engine import cosine_schedule


def adamw(params, lr: float, steps: int, warmup: int, floor: float = 0.1, weight_decay: float = 0.0,
          betas: tuple[float, float] = (0.9, 0.99)):
    """(optimizer, scheduler); the scheduler is stepped once per optimizer step."""
    opt = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    return opt, cosine_schedule(opt, steps, warmup, floor)


class EMA:
    """Shadow copy of the float parameters; decay ramps up as (1 + step) / (10 + step) to ``decay``."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach(), 1 - d)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.shadow.items()}
