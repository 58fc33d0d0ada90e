"""Small deterministic style images made on the spot, so tests and the browser check need nothing outside
the repo: "illustration" = flat saturated shapes with dark outlines, "photo" = smooth low-saturation
gradients with sensor-like noise. File names come in pairs (``<style>_07-1.png``, ``<style>_07-2.png``),
like the shared data set's name groups (bench.diffusion.data.group_of)."""

from __future__ import annotations

from pathlib import Path

STYLES = ("illustration", "photo")


def make_style_images(folder: Path, n: int = 6, size: int = 64, seed: int = 0, style: str = "illustration") -> Path:
    import numpy as np
    from PIL import Image, ImageDraw

    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, STYLES.index(style)])
    for i in range(n):
        if style == "illustration":
            im = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(170, 256, 3)))
            d = ImageDraw.Draw(im)
            for _ in range(3):
                x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
                x1, y1 = x0 + int(rng.integers(size // 4, size // 2)), y0 + int(rng.integers(size // 4, size // 2))
                fill = [0, 0, 0]
                fill[int(rng.integers(0, 3))] = 255
                fill[int(rng.integers(0, 3))] = int(rng.integers(120, 256))
                draw = d.ellipse if rng.random() < 0.5 else d.rectangle
                draw([x0, y0, x1, y1], fill=tuple(fill), outline=(20, 20, 20), width=max(1, size // 24))
        else:
            yy, xx = np.mgrid[0:size, 0:size] / size
            base = rng.uniform(0.3, 0.7) + rng.normal(0, 0.05, 3)
            arr = base + 0.2 * (xx[..., None] * rng.random() + yy[..., None] * rng.random())
            arr = arr + rng.normal(0, 0.04, (size, size, 3))
            im = Image.fromarray((np.clip(arr, 0, 1) * 255).astype("uint8"))
        im.save(folder / f"{style}_{i // 2:02d}-{i % 2 + 1}.png")
    return folder


def make_styles_root(root: Path, n: int = 6, size: int = 64, seed: int = 0) -> Path:
    """``root/illustration`` and ``root/photo`` (the layout bench.diffusion.data reads)."""
    for style in STYLES:
        make_style_images(root / style, n=n, size=size, seed=seed, style=style)
    return root
