"""Per-family choices that ComfyUI's model config does not carry: the default training resolution, which
norms are QK norms, and site widths measured with one forward (DiT norms without an affine, or whose
parameter is ``.scale``, do not give their width as an attribute)."""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Callable

import torch

from ..lineas_engine import NoMatchingSiteError, SiteSpec

logger = logging.getLogger(__name__)

__all__ = ["default_resolution", "is_qk_norm", "probe_widths", "inputs_copied",
           "NATIVE_RESOLUTION"]

# ComfyUI model config class -> the resolution the released weights were trained at; anything else: 1024
NATIVE_RESOLUTION = {"SD15": 512, "SD20": 768, "SD21UnclipL": 768, "SD21UnclipH": 768, "SD15_instructpix2pix": 512,
                     "SVD_img2vid": 1024, "WAN21_T2V": 832, "WAN22_T2V": 1280, "HunyuanVideo": 720}

# QK norms act on queries / keys per head dimension (shared by all heads): Flux / HunyuanVideo / Chroma
# ``query_norm``/``key_norm``, SD3.5 ``ln_q``/``ln_k``, Wan / Qwen-Image ``norm_q``/``norm_k``/``norm_added_q``,
# Lumina2 ``q_norm``/``k_norm``, HiDream ``q_rms_norm``/``k_rms_norm``, HunyuanVideo ``*_q_norm``.
_QK = re.compile(r"(?i)(^|[._])((query|key|q|k)(_rms)?_norm|norm_(added_)?(q|k)|ln_(q|k)|(img|txt)_attn_(q|k)_norm"
                 r"|norm_added_(q|k))$")


def default_resolution(model) -> int:
    cfg = getattr(model.model, "model_config", None)
    return NATIVE_RESOLUTION.get(type(cfg).__name__, 1024)


def is_qk_norm(name: str) -> bool:
    return bool(_QK.search(name))


def probe_widths(root: torch.nn.Module, names: list[str], run: Callable[[], object],
                 drop_constant: bool = False) -> dict[str, SiteSpec]:
    """Width and channel axis of each site from its output in one forward ``run()`` (no gradient):
    outputs with 4 or more dims ([B, C, H, W], [B, C, T, H, W]) take axis 1 unless the module's own 1-D
    parameter spans the last axis, token outputs [B, T, C] the last axis. Sites that did not run in that
    forward (e.g. unused experts) are left out, with a log line; none running is an error.

    ``drop_constant``: ``run()`` feeds two different images at the same noise level; sites whose output is
    the same for both (they see only the conditioning: Lumina2's context refiner, HunyuanVideo's token
    refiner, the first text-stream norms of MMDiT blocks) are left out too. Their OT loss is zero at the
    identity and any move raises it, while an optimiser that normalises its steps (Adam) still moves them:
    on Lumina2 that alone made the loss rise."""
    modules = dict(root.named_modules())
    shapes: dict[str, torch.Size] = {}
    constant: set[str] = set()
    handles = []
    for name in names:
        if name not in modules:
            raise NoMatchingSiteError(f"site {name!r} is not a module of {type(root).__name__}")

        def hook(_m, _a, out, name=name):
            if torch.is_tensor(out) and name not in shapes:
                shapes[name] = out.shape
                if drop_constant and out.dim() >= 2 and out.shape[0] >= 2 and torch.equal(out[0], out[1]):
                    constant.add(name)

        handles.append(modules[name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    silent = [n for n in names if n not in shapes]
    if silent:
        logger.info("%d of %d sites did not run in the probe forward and are left out: %s", len(silent),
                    len(names), silent[:5])
    if constant and len(constant) < len(shapes):
        logger.info("%d sites see only the conditioning (same output for every image) and are left out: %s",
                    len(constant), sorted(constant)[:5])
        shapes = {n: s for n, s in shapes.items() if n not in constant}
    if not shapes:
        raise NoMatchingSiteError(f"none of the {len(names)} sites ran in a forward of {type(root).__name__}")
    return {n: _spec(modules[n], s) for n in names if (s := shapes.get(n)) is not None}


def _spec(module: torch.nn.Module, shape: torch.Size) -> SiteSpec:
    """Token outputs [B, T, C]: the last axis. Outputs with 4+ dims: the axis the module's own 1-D
    parameter (weight / scale) spans, i.e. the last for QK norms on [B, heads, T, head_dim], axis 1 for
    GroupNorm on [B, C, H, W]; without a parameter, axis 1 (feature maps)."""
    if len(shape) < 4:
        return SiteSpec(int(shape[-1]), -1)
    sizes = {int(p.shape[0]) for p in module.parameters(recurse=False) if p.dim() == 1}
    if int(shape[-1]) in sizes and int(shape[1]) not in sizes:
        return SiteSpec(int(shape[-1]), -1)
    return SiteSpec(int(shape[1]), 1)


@contextlib.contextmanager
def inputs_copied(root: torch.nn.Module, names: list[str]):
    """While training: each site module gets a copy of its input tensor. DiT blocks update their residual
    stream in place after normalising it (Flux ``x += ...``, Chroma ``img.addcmul_(...)``); once a steering
    upstream makes that stream require grad, the norm's saved input would be modified before backward
    ("modified by an inplace operation"). The copy is what the norm saves; the block's own tensor is free
    to change. Hooks are removed on exit, also on errors."""
    modules = dict(root.named_modules())

    def pre_hook(_m, args):
        if args and torch.is_tensor(args[0]) and args[0].requires_grad:
            return (args[0].clone(),) + tuple(args[1:])
        return None

    handles = [modules[n].register_forward_pre_hook(pre_hook) for n in names if n in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
