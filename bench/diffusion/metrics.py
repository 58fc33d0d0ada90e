"""Figures of the style-steering benchmark: how many samples the judge calls illustration, how faithful a
steered sample stays to the unsteered sample of the same seed (SSIM), and the faithfulness of one method
at the style shift another reaches."""

from __future__ import annotations

import math

import numpy as np


def illustration_stats(p_illustration: np.ndarray) -> dict:
    """Fraction judged illustration (p > 0.5) with its binomial standard error, and the mean p."""
    p = np.asarray(p_illustration, dtype=np.float64)
    frac = float((p > 0.5).mean())
    return {"illustration_fraction": frac, "illustration_se": math.sqrt(frac * (1 - frac) / len(p)),
            "p_mean": float(p.mean())}


def ssim_to_reference(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-image SSIM (scikit-image, 7x7 window, colour channels averaged) of uint8 [N, H, W, 3] images
    against the reference images of the same index."""
    from skimage.metrics import structural_similarity

    if images.shape != reference.shape:
        raise ValueError(f"images {images.shape} and reference {reference.shape} must have the same shape")
    return np.array([structural_similarity(a, b, channel_axis=2, data_range=255) for a, b in zip(images, reference)])


def faithfulness_stats(ssim: np.ndarray) -> dict:
    s = np.asarray(ssim, dtype=np.float64)
    return {"ssim_mean": float(s.mean()), "ssim_se": float(s.std(ddof=1) / math.sqrt(len(s))) if len(s) > 1 else 0.0}


def ssim_at_fraction(curve: list[dict], fraction: float) -> float | None:
    """SSIM of a method at a given illustration fraction, linearly interpolated along its strength curve
    (points ``{"strength", "illustration_fraction", "ssim_mean"}``, walked in strength order). The first
    segment that reaches ``fraction`` is used; None when the curve never reaches it."""
    pts = sorted(curve, key=lambda r: r["strength"])
    for a, b in zip(pts, pts[1:]):
        fa, fb = a["illustration_fraction"], b["illustration_fraction"]
        if fa <= fraction <= fb and fb > fa:
            t = (fraction - fa) / (fb - fa)
            return a["ssim_mean"] + t * (b["ssim_mean"] - a["ssim_mean"])
        if fa == fraction:
            return a["ssim_mean"]
    if pts and pts[-1]["illustration_fraction"] == fraction:
        return pts[-1]["ssim_mean"]
    return None
