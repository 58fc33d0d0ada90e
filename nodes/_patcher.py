"""The only place that touches ComfyUI's ModelPatcher: clone, then patch under a key.

Hooks path: an APPLY_MODEL wrapper on the clone attaches the engine's hooks to the diffusion model only
for the duration of each model call (removed in ``finally``, also on interrupt), within the
start/end range of the schedule. Fold path: "diff" weight patches for sites whose norm has an affine
(zero run-time cost); remaining sites fall back to hooks."""

from __future__ import annotations

import math
import uuid

import torch

from ..lineas_engine import (
    IncompatibleSteeringError,
    LineasError,
    Steering,
    SteeringRecord,
    attach,
    check_compatible,
    folded_parameters,
)

__all__ = ["architecture_of", "diffusion_model_of", "check_fits", "apply_steering"]


def diffusion_model_of(model) -> torch.nn.Module:
    return model.get_model_object("diffusion_model")


def architecture_of(model) -> str:
    """ComfyUI's name for the model family (its model config class, e.g. SD15, SDXL, Flux)."""
    cfg = getattr(model.model, "model_config", None)
    return type(cfg).__name__ if cfg is not None else type(model.model).__name__


def check_fits(model, ref: SteeringRecord) -> None:
    arch = architecture_of(model)
    try:
        check_compatible(ref.steering, diffusion_model_of(model), fingerprint={"architecture": ref.architecture},
                         architecture=arch)
    except IncompatibleSteeringError as e:
        raise IncompatibleSteeringError(
            f"steering '{ref.name}' was trained on a {ref.architecture} model and cannot be applied to this "
            f"{arch} model ({e})"
        ) from None


def _hook_wrapper(steering: Steering, strength: float, sigma_start: float, sigma_end: float):
    def wrapper(executor, *args, **kwargs):
        base_model = executor.class_obj
        sigma = args[1] if len(args) > 1 else kwargs.get("t")
        active = True
        if sigma is not None and torch.is_tensor(sigma) and sigma.numel():
            s = float(sigma.max())
            active = sigma_end <= s <= sigma_start
        if not active or strength == 0:
            return executor(*args, **kwargs)
        handle = attach(base_model.diffusion_model, steering, strength)
        try:
            return executor(*args, **kwargs)
        finally:
            handle.remove()

    return wrapper


def apply_steering(model, ref: SteeringRecord, strength: float, start_percent: float = 0.0,
                   end_percent: float = 1.0, invert: bool = False, mode: str = "hooks"):
    """A clone of ``model`` with the steering applied; ``model`` itself is never modified."""
    if not math.isfinite(strength):
        raise LineasError(f"strength must be a finite number, got {strength!r}")
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise LineasError(f"need 0 <= start_percent <= end_percent <= 1, got {start_percent}, {end_percent}")
    check_fits(model, ref)
    steering = ref.steering.inverse() if invert else ref.steering
    m = model.clone()
    if strength == 0:
        return m
    key = f"lineas_{uuid.uuid4().hex[:12]}"
    if mode == "fold":
        if (start_percent, end_percent) != (0.0, 1.0):
            raise LineasError("mode 'fold' bakes the steering into the weights for the whole schedule; "
                              "use mode 'hooks' for a start/end range")
        params, report = folded_parameters(diffusion_model_of(model), steering, strength)
        dm = diffusion_model_of(model)
        patches = {}
        with torch.no_grad():
            for name, new in params.items():
                old = dm.get_parameter(name)
                patches[f"diffusion_model.{name}"] = ("diff", ((new.float() - old.float()).to(old.dtype),))
        m.add_patches(patches, 1.0)
        if report.skipped:  # sites without an affine: hooks for those only
            rest = steering.subset(report.skipped)
            m.add_wrapper_with_key("apply_model", key, _hook_wrapper(rest, strength, float("inf"), 0.0))
        return m
    if mode != "hooks":
        raise LineasError(f"mode must be 'hooks' or 'fold', got {mode!r}")
    ms = model.get_model_object("model_sampling")
    sigma_start = float("inf") if start_percent <= 0 else float(ms.percent_to_sigma(start_percent))
    sigma_end = 0.0 if end_percent >= 1 else float(ms.percent_to_sigma(end_percent))
    m.add_wrapper_with_key("apply_model", key, _hook_wrapper(steering, strength, sigma_start, sigma_end))
    return m
