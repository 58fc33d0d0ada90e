"""bench/diffusion/metrics against closed forms and scikit-image."""

from __future__ import annotations

import numpy as np
import pytest

from bench.diffusion import metrics

pytest.importorskip("skimage", reason="scikit-image is in the [diffusion] extra (bash scripts/dev.sh setup)")


def test_illustration_stats_is_the_binomial_fraction():
    st = metrics.illustration_stats(np.array([0.9, 0.2, 0.51, 0.5]))
    assert st["illustration_fraction"] == 0.5  # p > 0.5 strictly
    assert st["illustration_se"] == pytest.approx((0.5 * 0.5 / 4) ** 0.5)
    assert st["p_mean"] == pytest.approx(0.5275)


def test_ssim_is_one_on_identical_images_and_falls_with_noise():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert np.allclose(metrics.ssim_to_reference(ref, ref), 1.0)
    noisy = np.clip(ref.astype(int) + rng.integers(-40, 41, ref.shape), 0, 255).astype(np.uint8)
    very = np.clip(ref.astype(int) + rng.integers(-120, 121, ref.shape), 0, 255).astype(np.uint8)
    a, b = metrics.ssim_to_reference(noisy, ref), metrics.ssim_to_reference(very, ref)
    assert np.all(a < 1) and np.all(b < a)
    with pytest.raises(ValueError, match="same shape"):
        metrics.ssim_to_reference(ref[:2], ref)


def test_ssim_at_fraction_interpolates_along_the_strength_curve():
    curve = [{"strength": 1.0, "illustration_fraction": 0.6, "ssim_mean": 0.5},
             {"strength": 0.0, "illustration_fraction": 0.2, "ssim_mean": 1.0},
             {"strength": 0.5, "illustration_fraction": 0.4, "ssim_mean": 0.8}]
    assert metrics.ssim_at_fraction(curve, 0.3) == pytest.approx(0.9)
    assert metrics.ssim_at_fraction(curve, 0.5) == pytest.approx(0.65)
    assert metrics.ssim_at_fraction(curve, 0.6) == pytest.approx(0.5)
    assert metrics.ssim_at_fraction(curve, 0.2) == pytest.approx(1.0)
    assert metrics.ssim_at_fraction(curve, 0.7) is None
