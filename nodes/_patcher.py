"""Applying a steering to ComfyUI's ModelPatcher: clone, then patch under a key.

Hooks path: an APPLY_MODEL wrapper on the clone attaches the engine's hooks to the diffusion model only
for the duration of each model call (removed in ``finally``, also on interrupt), within the
start/end range of the schedule; the steering is cast to the model's device and dtype once per load
(device, dtype), not per site per call. Fold path: weight patches computed by ComfyUI at patch time from
the base weights (see ``_fold``) for sites whose module has an affine (zero run-time cost); the remaining
sites are applied with hooks and listed in the report."""

from __future__ import annotations

import copy
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
)

__all__ = ["architecture_of", "diffusion_model_of", "check_fits", "apply_steering", "apply_steering_report"]


def diffusion_model_of(model) -> torch.nn.Module:
    return model.get_model_object("diffusion_model")


def architecture_of(model) -> str:
    """ComfyUI's name for the model family (its model config class, e.g. SD15, SDXL, Flux)."""
    cfg = getattr(model.model, "model_config", None)
    return type(cfg).__name__ if cfg is not None else type(model.model).__name__


def check_fits(model, record: SteeringRecord) -> None:
    arch = architecture_of(model)
    try:
        check_compatible(record.steering, diffusion_model_of(model), fingerprint={"architecture": record.architecture},
                         architecture=arch)
    except IncompatibleSteeringError as e:
        raise IncompatibleSteeringError(
            f"steering '{record.name}' was trained on a {record.architecture} model and cannot be applied to this "
            f"{arch} model ({e})"
        ) from None


def compute_dtype_of(base_model) -> torch.dtype:
    """The dtype activations have inside ComfyUI's diffusion model (the manual-cast dtype for fp8 weights)."""
    return getattr(base_model, "manual_cast_dtype", None) or base_model.get_dtype()


COMPILE_KEY = "torch.compile"  # comfy_api.torch_helpers.torch_compile.COMPILE_KEY (TorchCompileModel's wrapper)


class CompiledModelError(LineasError):
    """The MODEL is torch.compiled (TorchCompileModel): forward hooks cannot reach inside the compiled graph."""


def compiled_message(what: str) -> str:
    return (f"this MODEL is torch.compiled (TorchCompileModel), so {what} cannot hook its layers (the compiled "
            "graph runs without them); put TorchCompileModel after LineasApply and use mode 'fold' (every site "
            "folded: no hooks), or remove TorchCompileModel")


def _has_compile_wrapper(transformer_options) -> bool:
    from comfy.patcher_extension import WrappersMP

    return COMPILE_KEY in (transformer_options or {}).get("wrappers", {}).get(WrappersMP.APPLY_MODEL, {})


def is_compiled(model) -> bool:
    """True when TorchCompileModel (``comfy_api.torch_helpers.set_torch_compile_wrapper``) is on this MODEL."""
    return (_has_compile_wrapper(model.model_options.get("transformer_options"))
            or "torch_compile_kwargs" in model.model_options)


def _compiled_at_call(base_model, transformer_options) -> bool:
    """In a model call: TorchCompileModel's wrapper is on the sampled clone, or has swapped in its module."""
    return (_has_compile_wrapper(transformer_options)
            or isinstance(base_model.diffusion_model, torch._dynamo.eval_frame.OptimizedModule))


class UnhookableSiteError(LineasError):
    """Sites whose module never runs as a module (a fused kernel reads its weights directly)."""


def _check_fired(steering: Steering, fired: set[str]) -> None:
    """QK-norm sites that did not run in a model call: newer ComfyUI reads their weights in fused attention
    kernels (Lumina2 / Z-Image, Cosmos-Predict2, ...), so a hook on them never fires. Said, never dropped."""
    from ._families import is_qk_norm

    silent = [s for s in steering.sites if s not in fired and is_qk_norm(s)]
    if silent:
        raise UnhookableSiteError(
            f"{len(silent)} QK-norm site(s) of this steering never ran as modules ({', '.join(silent[:4])}"
            f"{' ...' if len(silent) > 4 else ''}): this ComfyUI computes them inside a fused attention kernel, "
            "so hooks cannot steer them. Apply with mode 'fold' (folds scale-only maps into their weights), or "
            "train with a preset without QK norms ('all norms')")


def _hook_wrapper(steering: Steering, strength: float, sigma_start: float, sigma_end: float):
    # T_lambda as its own steering, cast once per (device, dtype): a model call then moves nothing
    mapped = steering.at_strength(strength) if strength not in (0, 1) else steering
    cast: dict[tuple, Steering] = {}
    whole_schedule = sigma_start == float("inf") and sigma_end <= 0  # no sigma read: no device sync per call
    checked = []

    def wrapper(executor, *args, **kwargs):
        base_model = executor.class_obj
        options = args[5] if len(args) > 5 else kwargs.get("transformer_options")
        if _compiled_at_call(base_model, options if isinstance(options, dict) else None):
            raise CompiledModelError(compiled_message("LineasApply (hooks)"))
        sigma = args[1] if len(args) > 1 else kwargs.get("t")
        active = True
        if not whole_schedule and sigma is not None and torch.is_tensor(sigma) and sigma.numel():
            s = float(sigma.max())
            active = sigma_end <= s <= sigma_start
        if not active or strength == 0:
            return executor(*args, **kwargs)
        x = args[0] if args else kwargs.get("x")
        key = (x.device, compute_dtype_of(base_model))
        if key not in cast:
            cast.clear()  # one live copy: the model moved or changed dtype
            cast[key] = copy.deepcopy(mapped).requires_grad_(False).to(device=key[0], dtype=key[1])
        handle = attach(base_model.diffusion_model, cast[key], 1.0)
        try:
            out = executor(*args, **kwargs)
        finally:
            handle.remove()
        if not checked:
            _check_fired(mapped, handle.fired)
            checked.append(True)
        return out

    return wrapper


def apply_steering(model, record: SteeringRecord, strength: float, start_percent: float = 0.0,
                   end_percent: float = 1.0, invert: bool = False, mode: str = "hooks"):
    """A clone of ``model`` with the steering applied; ``model`` itself is never modified."""
    return apply_steering_report(model, record, strength, start_percent, end_percent, invert, mode)[0]


def apply_steering_report(model, record: SteeringRecord, strength: float, start_percent: float = 0.0,
                          end_percent: float = 1.0, invert: bool = False, mode: str = "hooks"):
    """(patched clone, report text). In mode "fold" the report names the sites that could not be folded
    (kept as hooks, e.g. DiT LayerNorms without an affine) and why."""
    from comfy.patcher_extension import WrappersMP

    if not math.isfinite(strength):
        raise LineasError(f"strength must be a finite number, got {strength!r}")
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise LineasError(f"need 0 <= start_percent <= end_percent <= 1, got {start_percent}, {end_percent}")
    if mode not in ("hooks", "fold"):
        raise LineasError(f"mode must be 'hooks' or 'fold', got {mode!r}")
    check_fits(model, record)
    if mode == "hooks" and strength != 0 and is_compiled(model):
        raise CompiledModelError(compiled_message("LineasApply in mode 'hooks'"))
    steering = record.steering.inverse() if invert else record.steering
    m = model.clone()
    if strength == 0:
        return m, "strength 0: model unchanged"
    key = f"lineas_{uuid.uuid4().hex[:12]}"
    if mode == "fold":
        from ._fold import plan_fold

        if (start_percent, end_percent) != (0.0, 1.0):
            raise LineasError("mode 'fold' bakes the steering into the weights for the whole schedule; "
                              "use mode 'hooks' for a start/end range")
        plan = plan_fold(diffusion_model_of(model), steering)
        m.add_patches(plan.patches, strength)
        if plan.skipped:  # sites without an affine: hooks for those only, and said so in the report
            rest = steering.subset(plan.skipped)
            if is_compiled(model):
                raise CompiledModelError(
                    compiled_message(f"mode 'fold' with {len(plan.skipped)} site(s) kept as hooks"))
            m.add_wrapper_with_key(WrappersMP.APPLY_MODEL, key, _hook_wrapper(rest, strength, float("inf"), 0.0))
        return m, plan.describe()
    ms = model.get_model_object("model_sampling")
    sigma_start = float("inf") if start_percent <= 0 else float(ms.percent_to_sigma(start_percent))
    sigma_end = 0.0 if end_percent >= 1 else float(ms.percent_to_sigma(end_percent))
    m.add_wrapper_with_key(WrappersMP.APPLY_MODEL, key, _hook_wrapper(steering, strength, sigma_start, sigma_end))
    return m, f"hooks: {len(steering.sites)} sites, strength {strength}"
