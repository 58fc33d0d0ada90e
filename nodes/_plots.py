"""Small PIL-drawn plots returned as ComfyUI IMAGE tensors [1, H, W, 3] (no plotting dependency)."""

from __future__ import annotations

import numpy as np
import torch


def _to_image(img) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]


def line_plot(values: list[float], title: str, width: int = 512, height: int = 320) -> torch.Tensor:
    return _to_image(line_plot_pil(values, title, width, height))


def line_plot_pil(values: list[float], title: str, width: int = 512, height: int = 320):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 56, width - 12, 28, height - 28
    d.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    d.text((left, 8), title, fill=(0, 0, 0))
    if values:
        lo, hi = min(values), max(values)
        span = (hi - lo) or 1.0
        n = max(1, len(values) - 1)
        pts = [(left + (right - left) * i / n, bottom - (bottom - top) * (v - lo) / span) for i, v in enumerate(values)]
        if len(pts) > 1:
            d.line(pts, fill=(31, 119, 180), width=2)
        d.text((4, top), f"{hi:.3g}", fill=(0, 0, 0))
        d.text((4, bottom - 10), f"{lo:.3g}", fill=(0, 0, 0))
        d.text((right - 60, bottom + 8), f"step {len(values)}", fill=(0, 0, 0))
    return img


def bar_plot(labels: list[str], values: list[float], support: list[float], title: str,
             width: int = 640, height: int = 360) -> torch.Tensor:
    """Bars of per-site magnitude (blue) with the site's support as a grey overlay fraction."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 40, width - 10, 28, height - 40
    d.text((left, 8), title, fill=(0, 0, 0))
    d.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    n = max(1, len(values))
    vmax = max(values) if values and max(values) > 0 else 1.0
    bw = (right - left) / n
    for i, (v, s) in enumerate(zip(values, support)):
        x0, x1 = left + i * bw + 1, left + (i + 1) * bw - 1
        d.rectangle([x0, bottom - (bottom - top) * s, x1, bottom], fill=(220, 220, 220))
        d.rectangle([x0 + bw * 0.25, bottom - (bottom - top) * v / vmax, x1 - bw * 0.25, bottom], fill=(31, 119, 180))
    d.text((left, bottom + 8), f"{n} sites (grey: support, blue: mean |w-1|+|b|, max {vmax:.3g})", fill=(0, 0, 0))
    return _to_image(img)
