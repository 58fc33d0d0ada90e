"""Folding a steering into a ComfyUI MODEL's weights as weight patches computed at patch time.

A folded site keeps y = W' * xhat + B' with (at strength lambda, steering scale w and shift b):
    W' = W + lambda * ((w - 1) * (W + o))        (o = 0, or 1 for "(1 + g) * xhat" norms)
    B' = B + lambda * ((w - 1) * B + b)
Each key gets one patch object (ComfyUI's WeightAdapterBase interface, comfy/weight_adapter/base.py, applied
by comfy/lora.py calculate_weight) whose delta is computed from the weight that ComfyUI is patching at that
moment: the backed-up base weight plus the patches added before it (e.g. a LoRA on the same norms). Nothing
is read from the live model, which ComfyUI leaves patched by whatever clone sampled last."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from comfy.weight_adapter.base import WeightAdapterBase

from ..lineas_engine import Steering, folded_parameters

__all__ = ["FoldPatch", "FoldPlan", "plan_fold"]


class FoldPatch(WeightAdapterBase):
    """``weight + strength * ((scale - 1) * weight + shift)`` along the first (channel) axis.

    Built like ComfyUI's own adapters, ``FoldPatch(loaded_keys, [scale, shift])``: newer ComfyUI (Dynamic
    VRAM, ``comfy.lora.prefetch_prepared_value``) rebuilds adapters as ``type(p)(p.loaded_keys, p.weights)``
    with the weights moved to the device. :meth:`of` makes one from a steering's scale and shift."""

    name = "lineas_fold"

    def __init__(self, loaded_keys, weights):
        self.loaded_keys = set(loaded_keys or ())
        self.weights = list(weights)
        if len(self.weights) != 2:
            raise ValueError(f"FoldPatch takes [scale, shift], got {len(self.weights)} tensors")

    @classmethod
    def of(cls, scale: torch.Tensor, shift: torch.Tensor) -> "FoldPatch":
        return cls(set(), [scale.detach().float().cpu(), shift.detach().float().cpu()])

    @property
    def scale(self) -> torch.Tensor:
        return self.weights[0]

    @property
    def shift(self) -> torch.Tensor:
        return self.weights[1]

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        view = (-1,) + (1,) * (weight.dim() - 1)
        s = self.scale.to(weight.device, intermediate_dtype).view(view)
        c = self.shift.to(weight.device, intermediate_dtype).view(view)
        delta = (s - 1) * weight.to(intermediate_dtype) + c
        weight += function((strength * delta).type(weight.dtype))
        return weight


@dataclass
class FoldPlan:
    """Patches for the sites that fold exactly, and the sites that do not (kept as hooks), with reasons."""

    patches: dict[str, FoldPatch] = field(default_factory=dict)
    folded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        n = len(self.folded) + len(self.skipped)
        text = f"fold: {len(self.folded)} of {n} sites folded into the weights"
        if not self.skipped:
            return text
        reasons: dict[str, list[str]] = {}
        for site, why in self.skipped.items():
            reasons.setdefault(why, []).append(site)
        lines = [f"{text}; {len(self.skipped)} kept as hooks (same result, run-time cost):"]
        for why, sites in reasons.items():
            more = f" and {len(sites) - 8} more" if len(sites) > 8 else ""
            lines.append(f"  {len(sites)} site(s) {why}: {', '.join(sites[:8])}{more}")
        return "\n".join(lines)


def plan_fold(dm: torch.nn.Module, steering: Steering, prefix: str = "diffusion_model.") -> FoldPlan:
    """Which sites of ``dm`` fold exactly (the engine checks every fold against the hooked map) and the
    strength-linear patch of each of their weight / bias keys. The live weights only decide the
    convention (o = 0 or 1); the patch values never depend on them."""
    params, report = folded_parameters(dm, steering, 1.0)
    plan = FoldPlan(folded=list(report.folded), skipped=dict(report.skipped))
    with torch.no_grad():
        for site in report.folded:
            w = steering.weight(site).detach().float().cpu()
            b = steering.bias(site).detach().float().cpu()
            live_w = dm.get_parameter(f"{site}.weight").detach().float().cpu()
            new_w = params[f"{site}.weight"].float().cpu()
            view = (-1,) + (1,) * (live_w.dim() - 1)
            wv = w.view(view)
            o = 0.0
            if live_w.dim() == 1:  # "(1 + g) * xhat" norms fold with o = 1 (the engine probed which one holds)
                err0 = (new_w - wv * live_w).abs().max()
                err1 = (new_w - (wv * (live_w + 1) - 1)).abs().max()
                o = 1.0 if err1 < err0 else 0.0
            plan.patches[f"{prefix}{site}.weight"] = FoldPatch.of(w, (w - 1) * o)
            if f"{site}.bias" in params:
                plan.patches[f"{prefix}{site}.bias"] = FoldPatch.of(w, b)
    return plan
