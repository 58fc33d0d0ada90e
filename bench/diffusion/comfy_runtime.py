"""The installed ComfyUI ($COMFYUI_PATH, default ~/ComfyUI) at run time: the model classes are imported
from it (never copied), on the CPU, through the same set-up the node tests use (tests/nodes/comfy_env)."""

from __future__ import annotations

from tests.nodes.comfy_env import COMFY, InProcessComfy, comfy_available, import_comfy

__all__ = ["COMFY", "InProcessComfy", "require_comfy"]


def require_comfy() -> None:
    """Make ``comfy.*`` importable (CPU, no argument parsing) or raise with the reason it is not."""
    ok, why = comfy_available()
    if not ok:
        raise RuntimeError(why)
    import_comfy()


def init_default_(module) -> None:
    """ComfyUI's ops skip weight init (they expect a checkpoint): give every conv / linear / norm torch's
    default initialisation, from torch's global generator (seed it first)."""
    import torch.nn as nn

    for m in module.modules():
        for base in (nn.Conv2d, nn.Linear, nn.GroupNorm, nn.LayerNorm):
            if isinstance(m, base):
                base.reset_parameters(m)
                break
