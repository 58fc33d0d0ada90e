"""Image sets for training: a folder path (absolute, or relative to ComfyUI's input folder) or an
IMAGE batch, brought to one square resolution (centre crop + resize) as ComfyUI IMAGE [B, H, W, 3].

Reading a folder: EXIF orientation applied (as ComfyUI's LoadImage, nodes.py:1656); 16-bit and 32-bit
grayscale scaled exactly from their own range (``convert("RGB")`` would clip them to white); alpha dropped
(as LoadImage, nodes.py:1660); images over ``MAX_IMAGE_PIXELS`` refused with our own message before they
are decoded; at most ``$LINEAS_MAX_FOLDER_IMAGES`` images (default 1000) per folder, each resized as soon
as it is read, so memory stays at count x resolution^2."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..lineas_engine import LineasError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
RESIZE_MODES = ("crop", "stretch", "none")
MAX_IMAGE_PIXELS = 8192 * 8192
MAX_FOLDER_IMAGES = 1000  # default of $LINEAS_MAX_FOLDER_IMAGES
_MAX_ENV = "LINEAS_MAX_FOLDER_IMAGES"


def max_folder_images() -> int:
    """The folder-size limit: ``$LINEAS_MAX_FOLDER_IMAGES`` (a positive integer) or 1000."""
    raw = os.environ.get(_MAX_ENV, "").strip()
    if not raw:
        return MAX_FOLDER_IMAGES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise LineasError(f"{_MAX_ENV}={raw!r} must be a positive integer (the most images read from a folder)")
    return value


def _to_array(im) -> np.ndarray:
    """A PIL image (any mode) -> float32 [H, W, 3] in [0, 1], exactly for 8- and 16-bit data."""
    mode = im.mode
    if mode.startswith("I;16"):
        a = np.asarray(im).astype(np.float32) / 65535.0
    elif mode == "I":  # 32-bit integer: how Pillow may open 16-bit grayscale PNGs; read as 16-bit data
        a = np.clip(np.asarray(im).astype(np.float64) / 65535.0, 0, 1).astype(np.float32)
    elif mode == "F":
        a = np.clip(np.nan_to_num(np.asarray(im, dtype=np.float32)), 0, 1)
    else:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return np.repeat(a[..., None], 3, axis=-1)


def read_image(path: Path) -> torch.Tensor:
    """One image file -> [H, W, 3] float32 in [0, 1] (EXIF orientation applied); a LineasError naming the
    file for anything unreadable or oversized."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    too_big = (f"image {str(path)!r} is larger than {MAX_IMAGE_PIXELS:,} pixels; training works at a few "
               "hundred pixels: downscale it or remove it from the folder")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise LineasError(f"{too_big} (it is {w} x {h})")
            return torch.from_numpy(_to_array(ImageOps.exif_transpose(im)))
    except LineasError:
        raise
    except Image.DecompressionBombError:
        raise LineasError(too_big) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, TypeError) as e:
        raise LineasError(f"cannot read image {str(path)!r} ({type(e).__name__}); remove or replace it") from None


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
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in EXTENSIONS)
    if limit:
        files = files[:limit]
    if not files:
        raise LineasError(f"image folder {str(folder)!r} has no images ({', '.join(EXTENSIONS)})")
    cap = max_folder_images()
    if len(files) > cap:
        gib = len(files) * resolution * resolution * 3 * 4 / 2**30
        raise LineasError(f"image folder {str(folder)!r} has {len(files)} images, more than the limit of {cap} "
                          f"(they would need {gib:.1f} GiB at {resolution} px before the VAE); use a smaller "
                          f"folder, or raise the limit with the environment variable {_MAX_ENV}")
    if resize == "none":  # nothing to shrink: all must already be resolution x resolution
        return conform([read_image(f) for f in files], resolution, resize, what=str(folder))
    # resize each image as it is read: memory is count x resolution^2, not the sum of the originals
    return torch.cat([conform([read_image(f)], resolution, resize, what=str(folder)) for f in files])


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
