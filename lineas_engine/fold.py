"""Baking a steering into the weights of the site modules (zero run-time cost).

A site y = g * xhat + beta (a norm with an affine) followed by T(y) = w y + b equals a norm with
g' = w g and beta' = w beta + b. Gemma-style norms compute (1 + g) * xhat, so there g' = w (1 + g) - 1.
Linear / conv sites fold the same way along the output axis. Every fold is checked numerically against
the hooked map on random inputs; what cannot be folded exactly is reported, never approximated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from .steering import Steering

__all__ = ["FoldReport", "folded_parameters", "fold_"]


@dataclass
class FoldReport:
    folded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.skipped


def _probe_inputs(module: nn.Module, dim: int, axis: int, dtype, device) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = []
    if hasattr(module, "in_features"):
        shapes.append((2, 3, module.in_features))
    if hasattr(module, "in_channels"):
        k = getattr(module, "kernel_size", (1, 1))
        shapes += [(2, module.in_channels) + tuple(max(5, s) for s in k)]
    ns = getattr(module, "normalized_shape", None)
    if ns is not None:
        shapes.append((2, 3) + (tuple(ns) if not isinstance(ns, int) else (ns,)))
    shapes += [(2, dim, 3, 3), (2, 3, dim)] if axis == 1 else [(2, 3, dim), (2, dim)]
    return [(torch.randn(s, generator=g) * 2 + 0.5).to(device=device, dtype=dtype) for s in shapes]


def _fold_site(module: nn.Module, steering: Steering, site: str, strength: float):
    spec = steering.specs[site]
    weight = module._parameters.get("weight")
    bias = module._parameters.get("bias")
    if weight is None or weight.dim() == 0 or weight.shape[0] != spec.dim:
        return None, "no per-channel weight to fold into (e.g. a norm without elementwise affine); keep hooks"
    with torch.no_grad():
        w = (1 + strength * (steering.weight(site).detach().float() - 1)).to(weight.device)
        b = (strength * steering.bias(site).detach().float()).to(weight.device)
        if bias is None and bool((b != 0).any()):
            return None, ("has a shift b but the module has no bias (e.g. RMSNorm); fold the shift into the "
                          "next linear layer's bias, or keep hooks")
        view = (-1,) + (1,) * (weight.dim() - 1)
        conventions = [0.0] + ([1.0] if weight.dim() == 1 else [])
        probes = _probe_inputs(module, spec.dim, spec.channel_axis, weight.dtype, weight.device)
        tol = 1e-5 if weight.dtype in (torch.float32, torch.float64) else 2e-2
        for offset in conventions:
            new_w = (w.view(view) * (weight.float() + offset) - offset).to(weight.dtype)
            new = {"weight": new_w}
            if bias is not None:
                new["bias"] = (w * bias.float() + b).to(bias.dtype)
            if _agrees(module, new, steering, site, strength, probes, tol):
                return new, None
    return None, "folding does not reproduce the hooked map for this module type; keep hooks"


def _agrees(module, new, steering, site, strength, probes, tol) -> bool:
    for x in probes:
        try:
            plain_out = module(x)
        except Exception:  # noqa: BLE001 - probing shapes the module may not accept
            continue
        if not isinstance(plain_out, torch.Tensor):
            return False
        try:
            expect = steering.apply_to(site, plain_out, strength)
        except Exception:  # noqa: BLE001
            continue
        got = functional_call(module, new, (x,))
        scale = expect.abs().max().clamp_min(1).item()
        return bool(torch.allclose(got.float(), expect.float(), rtol=tol, atol=tol * scale))
    return False


def folded_parameters(root: nn.Module, steering: Steering, strength: float = 1.0):
    """New values of the site modules' parameters ``{"<site>.weight": tensor, ...}`` that bake the
    steering in, and a :class:`FoldReport`. Nothing is modified."""
    modules = dict(root.named_modules())
    params: dict[str, torch.Tensor] = {}
    report = FoldReport()
    with torch.no_grad():
        for site in steering.sites:
            module = modules.get(site)
            if module is None:
                report.skipped[site] = "not a module of this model"
                continue
            new, reason = _fold_site(module, steering, site, strength)
            if new is None:
                report.skipped[site] = reason
                continue
            for k, v in new.items():
                params[f"{site}.{k}"] = v
            report.folded.append(site)
    return params, report


def fold_(root: nn.Module, steering: Steering, strength: float = 1.0) -> FoldReport:
    """Bake the steering into ``root`` in place; sites that cannot be folded exactly are left untouched
    and listed in ``report.skipped`` (apply those with hooks)."""
    params, report = folded_parameters(root, steering, strength)
    with torch.no_grad():
        for name, value in params.items():
            root.get_parameter(name).copy_(value)
    return report
