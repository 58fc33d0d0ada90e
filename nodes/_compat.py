"""What differs between the ComfyUI versions the pack runs on (v0.3.64 to 0.33), found by feature detection,
never by version numbers.

- ``comfy.model_management.in_training`` (newer trees): RoPE and fused ``rms_rope`` kernels (comfy_kitchen
  custom ops) have no autograd formula and run only when it is False; ComfyUI's own trainer sets it True for
  the whole training call (comfy_extras/nodes_train.py). :func:`training_mode` does the same and restores it.
- Quantized weights (``comfy.quant_ops.QuantizedTensor``: fp8-scaled, nvfp4, mxfp8, int8 checkpoints): a
  tensor subclass without a plain storage. :func:`is_quantized` tells them apart. ComfyUI quantizes linear and
  conv weights only; the norm weights the pack reads (fold, LoRA export) stay plain tensors.
- Dynamic VRAM (``ModelPatcherDynamic``, comfy_aimdo): the forward uses weight views that ComfyUI makes on
  demand; :func:`is_dynamic` tells such a patcher. ``ModelPatcher.get_free_memory`` (newer trees) counts what
  Dynamic VRAM can evict: :func:`free_memory` asks the patcher when it offers it.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

__all__ = ["training_mode", "is_quantized", "is_dynamic", "free_memory"]


@contextlib.contextmanager
def training_mode() -> Iterator[None]:
    """``comfy.model_management.in_training = True`` for the duration (where the tree has it), then the
    previous value, also on error or interrupt."""
    import comfy.model_management as mm

    if not hasattr(mm, "in_training"):
        yield
        return
    previous = mm.in_training
    mm.in_training = True
    try:
        yield
    finally:
        mm.in_training = previous


@functools.lru_cache(maxsize=1)
def _quantized_type():
    try:
        from comfy.quant_ops import QuantizedTensor
    except (ImportError, AttributeError):
        return None
    return QuantizedTensor


def is_quantized(t) -> bool:
    qt = _quantized_type()
    return qt is not None and isinstance(t, qt)


def is_dynamic(patcher) -> bool:
    """True for a Dynamic VRAM patcher (weights loaded and cast on demand, newer trees)."""
    probe = getattr(patcher, "is_dynamic", None)
    if callable(probe):
        return bool(probe())
    return type(patcher).__name__ == "ModelPatcherDynamic"


def free_memory(patcher, device) -> int:
    """Free memory on ``device`` for training with ``patcher`` (or None) loaded: the patcher's own count where
    the tree offers it (Dynamic VRAM adds what it can evict), else ``model_management.get_free_memory``."""
    import comfy.model_management as mm

    own = getattr(patcher, "get_free_memory", None)
    return int(own(device) if callable(own) else mm.get_free_memory(device))
