"""The steering itself: per-site, per-channel affine maps h -> w * h + b, identity at init.

Strength, inverse and composition are exact algebra on (w, b):
  T_lambda(z) = (1 + lambda (w - 1)) z + lambda b;   T^-1(z) = (z - b) / w;
  (T2 o T1)(z) = (w2 w1) z + (w2 b1 + b2).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn

from .errors import LineasError, SiteOutputError
from .sites import SiteSpec

__all__ = ["Steering", "site_key"]


def site_key(site: str) -> str:
    """ParameterDict key for a module name (dots are not allowed in module keys)."""
    return site.replace(".", "__")


class Steering(nn.Module):
    """Per-site scale ``w`` and shift ``b`` (float32 parameters), applied on each site's channel axis."""

    def __init__(self, specs: Mapping[str, SiteSpec]):
        super().__init__()
        if not specs:
            raise LineasError("a Steering needs at least one site")
        self.specs: dict[str, SiteSpec] = dict(specs)
        keys = [site_key(s) for s in self.specs]
        if len(set(keys)) != len(keys):
            raise LineasError(f"site names collide once '.' is replaced by '__': {sorted(self.specs)}")
        self.scale = nn.ParameterDict({site_key(s): nn.Parameter(torch.ones(p.dim)) for s, p in self.specs.items()})
        self.shift = nn.ParameterDict({site_key(s): nn.Parameter(torch.zeros(p.dim)) for s, p in self.specs.items()})

    # -- access ---------------------------------------------------------------------------------------
    @property
    def sites(self) -> list[str]:
        return list(self.specs)

    def weight(self, site: str) -> torch.Tensor:
        return self.scale[site_key(site)]

    def bias(self, site: str) -> torch.Tensor:
        return self.shift[site_key(site)]

    def num_parameters(self) -> int:
        return sum(2 * p.dim for p in self.specs.values())

    def __repr__(self) -> str:
        return f"Steering({len(self.specs)} sites, {self.num_parameters()} parameters)"

    # -- application ----------------------------------------------------------------------------------
    def apply_to(self, site: str, h: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        """Map ``h`` (the output of ``site``) on its channel axis. ``strength == 0`` returns ``h`` itself."""
        if strength == 0:
            return h
        spec = self.specs[site]
        axis = spec.channel_axis if spec.channel_axis == -1 else 1
        if h.dim() < 2 or h.shape[axis] != spec.dim:
            raise SiteOutputError(
                f"site {site!r} produced shape {tuple(h.shape)} but the steering expects {spec.dim} channels "
                f"on axis {axis}; the steering was made for another model or site"
            )
        w = self.weight(site).to(device=h.device)
        b = self.bias(site).to(device=h.device)
        if strength != 1:
            w = 1 + strength * (w - 1)
            b = strength * b
        shape = (1, spec.dim) + (1,) * (h.dim() - 2) if axis == 1 else (spec.dim,)
        if h.dtype in (torch.float32, torch.float64) or not h.is_floating_point():
            return torch.addcmul(b.to(h.dtype).view(shape), h, w.to(h.dtype).view(shape))
        # half precision (bf16 / fp16): w - 1 in h's dtype keeps the map's small deviations from the identity
        # (bf16 resolves 1 + 2^-7 at best, w - 1 to 8 significant bits), and the identity stays exact
        return h + torch.addcmul(b.to(h.dtype).view(shape), h, (w - 1).to(h.dtype).view(shape))

    # -- construction --------------------------------------------------------------------------------
    @classmethod
    def from_tensors(cls, specs: Mapping[str, SiteSpec], weights: Mapping[str, torch.Tensor],
                     biases: Mapping[str, torch.Tensor]) -> "Steering":
        """A steering (float32, on the CPU) with the given scale and shift at every site of ``specs``."""
        out = cls(specs)
        with torch.no_grad():
            for s, spec in out.specs.items():
                for name, src, dst in (("scale", weights, out.weight(s)), ("shift", biases, out.bias(s))):
                    t = src[s]
                    if tuple(t.shape) != (spec.dim,):
                        raise SiteOutputError(
                            f"{name} of site {s!r} has shape {tuple(t.shape)}, expected ({spec.dim},)")
                    dst.copy_(t.detach().float().cpu())
        return out

    def subset(self, sites) -> "Steering":
        """The maps of ``sites`` only (a copy)."""
        sites = list(sites)
        unknown = [s for s in sites if s not in self.specs]
        if unknown:
            raise LineasError(f"sites {unknown[:3]} are not in this steering ({len(self.specs)} sites)")
        return Steering.from_tensors({s: self.specs[s] for s in sites}, {s: self.weight(s) for s in sites},
                                     {s: self.bias(s) for s in sites})

    # -- algebra (exact, returns new steerings) -------------------------------------------------------

    def at_strength(self, strength: float) -> "Steering":
        """The map T_lambda as a steering of its own (strength 1)."""
        try:
            finite = not isinstance(strength, (str, bytes)) and math.isfinite(float(strength))
        except (TypeError, ValueError):
            finite = False
        if not finite:
            raise LineasError(f"strength must be a finite number (1 = the trained map, 0 = off), got {strength!r}")
        with torch.no_grad():
            ws = {s: 1 + strength * (self.weight(s) - 1) for s in self.specs}
            bs = {s: strength * self.bias(s) for s in self.specs}
        return Steering.from_tensors(self.specs, ws, bs)

    def inverse(self) -> "Steering":
        """T^-1(z) = (z - b) / w; refuses a zero scale."""
        with torch.no_grad():
            ws = {s: 1 / self.weight(s) for s in self.specs}
            bs = {s: -self.bias(s) / self.weight(s) for s in self.specs}
            for s in self.specs:  # a zero scale, or one so small that 1/w overflows float32 (e.g. 1e-40)
                bad = ~(torch.isfinite(ws[s]) & torch.isfinite(bs[s]))
                if bad.any():
                    w = self.weight(s)[bad][0].item()
                    raise LineasError(f"site {s!r} has a scale of {w:.3g}: the steering is not invertible there "
                                      "(its inverse overflows)")
        return Steering.from_tensors(self.specs, ws, bs)

    def then(self, other: "Steering") -> "Steering":
        """``other`` applied after ``self`` on every site (sites of either; missing = identity)."""
        specs = dict(self.specs)
        for s, p in other.specs.items():
            if s in specs and specs[s] != p:
                raise LineasError(f"cannot compose: site {s!r} is {specs[s]} in one steering and {p} in the other")
            specs[s] = p
        ws, bs = {}, {}
        with torch.no_grad():
            for s, p in specs.items():
                w1 = self.weight(s) if s in self.specs else torch.ones(p.dim)
                b1 = self.bias(s) if s in self.specs else torch.zeros(p.dim)
                w2 = other.weight(s).to(w1) if s in other.specs else torch.ones_like(w1)
                b2 = other.bias(s).to(w1) if s in other.specs else torch.zeros_like(w1)
                ws[s], bs[s] = w2 * w1, w2 * b1 + b2
        return Steering.from_tensors(specs, ws, bs)

    # -- statistics -----------------------------------------------------------------------------------
    def stats(self) -> dict[str, dict[str, float]]:
        """Per site: support (fraction of channels with w != 1 or b != 0) and magnitudes."""
        out = {}
        with torch.no_grad():
            for s in self.specs:
                dw = (self.weight(s) - 1).float()
                b = self.bias(s).float()
                active = (dw != 0) | (b != 0)
                out[s] = {
                    "dim": self.specs[s].dim,
                    "support": active.float().mean().item(),
                    "mean_abs_scale_dev": dw.abs().mean().item(),
                    "max_abs_scale_dev": dw.abs().max().item(),
                    "mean_abs_shift": b.abs().mean().item(),
                    "max_abs_shift": b.abs().max().item(),
                    "group_norm": torch.cat([dw, b]).norm().item(),
                }
        return out

    def support(self) -> float:
        """Fraction of all coordinates (over every site) with w != 1 or b != 0."""
        active = total = 0
        with torch.no_grad():
            for s in self.specs:
                a = (self.weight(s) != 1) | (self.bias(s) != 0)
                active += int(a.sum())
                total += a.numel()
        return active / total
