"""One vector per sample and site: mean over tokens (padding masked out) or over spatial positions."""

from __future__ import annotations

import torch

from .errors import SiteOutputError

__all__ = ["pool"]


def pool(h: torch.Tensor, channel_axis: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pool ``h`` to [B, C].

    ``channel_axis == -1``: h is [B, ..., C]; mean over the middle axes, weighted by ``mask``
    ([B, T], 1 for real tokens) when h is [B, T, C].
    ``channel_axis == 1``: h is [B, C, ...]; mean over every axis after the channels.
    Half-precision activations are averaged in fp32 (the pooled vector is fp32): a bf16 mean rounds the
    differences between samples that the OT loss compares.
    """
    if h.dim() == 2:
        return h
    low = h.is_floating_point() and h.element_size() < 4  # bf16 / fp16 / fp8: mean in fp32
    if channel_axis == 1:
        return h.flatten(2).mean(dim=2, dtype=torch.float32) if low else h.flatten(2).mean(dim=2)
    if mask is not None and h.dim() == 3:
        if mask.shape != h.shape[:2]:
            raise SiteOutputError(
                f"attention mask of shape {tuple(mask.shape)} does not fit activations {tuple(h.shape)}"
            )
        m = mask.to(dtype=h.dtype, device=h.device).unsqueeze(-1)
        # where, not h * m: a NaN / inf at a padding position must not reach the pooled vector (NaN * 0 = NaN)
        zero = torch.zeros((), dtype=h.dtype, device=h.device)
        return torch.where(m != 0, h * m, zero).sum(dim=1) / m.sum(dim=1).clamp_min(1)
    return h.flatten(1, -2).mean(dim=1, dtype=torch.float32) if low else h.flatten(1, -2).mean(dim=1)
