"""Image sets for training: a folder path (absolute, or relative to ComfyUI's input folder) or an
IMAGE batch, brought to one square resolution (centre crop + resize) as ComfyUI IMAGE [B, H, W, 3]."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..lineas_engine import LineasError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
RESIZE_MODES = ("crop", "stretch", "none")


def resolve_folder(folder: str, input_dir: str | None) -> Path:
    folder = (folder or "").strip()
    if not folder:
        raise LineasError("no image folder given: type a folder path (absolute, or inside ComfyUI's input folder) "
                          "or connect an IMAGE batch")
    p = Path(os.path.expanduser(folder))
    if not p.is_absolute() and input_dir:
        p = Path(input_dir) / p
    if not p.is_dir():
        raise LineasError(f"image folder {str(p)!r} does not exist; check the path")
    return p


def load_folder(folder: Path, resolution: int, resize: str = "crop", limit: int = 0) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in EXTENSIONS)
    if limit:
        files = files[:limit]
    if not files:
        raise LineasError(f"image folder {str(folder)!r} has no images ({', '.join(EXTENSIONS)})")
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise LineasError(f"cannot read image {str(f)!r} ({type(e).__name__}); remove or replace it") from None
        images.append(torch.from_numpy(arr))
    return conform(images, resolution, resize, what=str(folder))


def conform(images, resolution: int, resize: str, what: str) -> torch.Tensor:
    """List of [H, W, 3] (or a [B, H, W, C] batch) -> [B, resolution, resolution, 3]."""
    if resize not in RESIZE_MODES:
        raise LineasError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if isinstance(images, torch.Tensor):
        images = list(images[..., :3])
    if resize == "none":
        sizes = sorted({tuple(im.shape[:2]) for im in images})
        if len(sizes) > 1:
            raise LineasError(f"images in {what} have different sizes {sizes[:4]}; choose resize 'crop' or 'stretch'")
        if sizes[0] != (resolution, resolution):
            raise LineasError(f"images in {what} are {sizes[0]}, not {resolution}x{resolution}; "
                              "choose resize 'crop' or 'stretch', or set resolution to their size")
        return torch.stack(images)
    out = []
    for im in images:
        x = im.permute(2, 0, 1)[None].float()
        if resize == "crop":
            h, w = x.shape[-2:]
            s = min(h, w)
            top, left = (h - s) // 2, (w - s) // 2
            x = x[..., top : top + s, left : left + s]
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
        out.append(x[0].permute(1, 2, 0).clamp(0, 1))
    return torch.stack(out)
