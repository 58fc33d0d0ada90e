"""Layer-wise baseline (Linear-AcT style): every site fitted alone, on activations of the UNSTEERED
model, with a per-coordinate affine map fitted in closed form to the 1-D optimal transport map (least
squares of the sorted target quantiles on the sorted source quantiles). Upstream maps are not seen by
downstream fits, which is what end-to-end training fixes."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from .config import Forward
from .errors import LineasError
from .recording import record_activations
from .sites import SiteSpec
from .steering import Steering

__all__ = ["affine_ot_fit", "fit_layerwise"]


def _quantiles(x: torch.Tensor, k: int) -> torch.Tensor:
    xs = torch.sort(x, dim=0).values
    idx = ((torch.arange(k, dtype=torch.float64) + 0.5) * x.shape[0] / k).floor().long()
    return xs.index_select(0, idx.to(x.device))


def affine_ot_fit(src: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column (w, b) minimising sum_k (w q_src(u_k) + b - q_tgt(u_k))^2 over K = max(n, m) quantile
    levels u_k = (k + 1/2) / K. A constant source column gets w = 1 and a pure shift."""
    k = max(src.shape[0], tgt.shape[0])
    qs, qt = _quantiles(src.double(), k), _quantiles(tgt.double().to(src.device), k)
    ms, mt = qs.mean(0), qt.mean(0)
    var = (qs - ms).pow(2).mean(0)
    cov = ((qs - ms) * (qt - mt)).mean(0)
    flat = var <= 1e-12 * (1 + ms.abs()).pow(2)
    w = torch.where(flat, torch.ones_like(var), cov / torch.where(flat, torch.ones_like(var), var))
    b = mt - w * ms
    return w.float(), b.float()


def fit_layerwise(
    root: nn.Module,
    specs: Mapping[str, SiteSpec],
    forward: Forward,
    source: Mapping[str, Any] | None,
    target: Mapping[str, Any] | None = None,
    *,
    target_acts: Mapping[str, torch.Tensor] | None = None,
    source_acts: Mapping[str, torch.Tensor] | None = None,
    batch_size: int = 32,
    mask_key: str | None = "attention_mask",
) -> Steering:
    """A steering whose map at each site transports that site's unsteered source activations onto the
    target's, independently of every other site. ``target_acts`` / ``source_acts`` (from
    :func:`record_activations` of the unsteered model) skip recording that side."""
    if target_acts is None:
        if target is None:
            raise LineasError("fit_layerwise needs target samples or cached target_acts")
        target_acts = record_activations(root, specs, forward, target, batch_size=batch_size, mask_key=mask_key)
    if source_acts is None and source is None:
        raise LineasError("fit_layerwise needs source samples or cached source_acts")
    src_acts = source_acts if source_acts is not None else record_activations(
        root, specs, forward, source, batch_size=batch_size, mask_key=mask_key)
    steering = Steering(specs)
    with torch.no_grad():
        for site in specs:
            w, b = affine_ot_fit(src_acts[site], target_acts[site])
            steering.weight(site).copy_(w.cpu())
            steering.bias(site).copy_(b.cpu())
    return steering
