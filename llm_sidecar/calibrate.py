"""Utility-budget calibration: the largest strength lambda in [0, 1] at which the steered model's perplexity
on a set of neutral texts rises by at most a given fraction, found by bisection. The calibrated map
T_lambda(z) = (1 + lambda (w - 1)) z + lambda b is saved as the steering, so that strength 1 of the file is
the calibrated map. Calibrate on neutral texts that are NOT the ones used for evaluation."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from lineas_engine import LineasError, Steering, SteeringRecord

from .data import hash_texts
from .models import LoadedModel
from .perplexity import perplexity

__all__ = ["Calibration", "calibrate_strength", "calibrate_record", "apply_calibration", "check_budget",
           "bisect_strength"]

logger = logging.getLogger(__name__)


@dataclass
class Calibration:
    strength: float
    max_increase: float
    base_perplexity: float
    perplexity: float  # at ``strength``
    num_texts: int
    evaluations: list[tuple[float, float]] = field(default_factory=list)  # (strength, perplexity)

    def to_dict(self) -> dict:
        return asdict(self)


def check_budget(max_increase: float) -> None:
    if not max_increase > 0:
        raise LineasError(f"--max-ppl-increase must be > 0 (e.g. 0.1 for +10%), got {max_increase}")


def bisect_strength(ok: Callable[[float], bool], iterations: int = 6) -> float:
    """Largest lambda in [0, 1] with ``ok(lambda)`` (assumed monotone: true up to some point), to within
    2**-iterations; 1.0 when ``ok(1)``. ``ok(0)`` is assumed true (strength 0 is the model itself)."""
    if ok(1.0):
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


def calibrate_strength(lm: LoadedModel, steering: Steering, texts: Sequence[str], *, max_increase: float = 0.1,
                       iterations: int = 6, show_progress: bool = False) -> Calibration:
    """Bisect the strength so that perplexity on ``texts`` is at most ``(1 + max_increase)`` x the base."""
    check_budget(max_increase)
    if len(texts) < 1:
        raise LineasError("calibration needs at least 1 neutral text (--calibrate-on FILE)")
    base = perplexity(lm, texts, show_progress=show_progress, desc="calibrate: base")
    seen: list[tuple[float, float]] = []

    def ok(lam: float) -> bool:
        ppl = perplexity(lm, texts, steering=steering, strength=lam, show_progress=show_progress,
                         desc=f"calibrate: s={lam:.3f}")
        seen.append((lam, ppl))
        logger.info("calibration: strength %.4f -> perplexity %.3f (base %.3f, %+.1f%%)", lam, ppl, base,
                    100 * (ppl / base - 1))
        return ppl <= base * (1 + max_increase)

    lam = bisect_strength(ok, iterations)
    at = dict(seen).get(lam, base)
    return Calibration(strength=lam, max_increase=max_increase, base_perplexity=base, perplexity=at,
                       num_texts=len(texts), evaluations=seen)


def calibrate_record(lm: LoadedModel, record: SteeringRecord, texts: Sequence[str], *,
                     max_increase: float = 0.1) -> Calibration:
    """Calibrate a trained steering in place (see :func:`apply_calibration`)."""
    cal = calibrate_strength(lm, record.steering.to(lm.device), texts, max_increase=max_increase)
    apply_calibration(record, cal, texts)
    return cal


def apply_calibration(record: SteeringRecord, calibration: Calibration, texts: Sequence[str]) -> SteeringRecord:
    """``record`` becomes the map at the calibrated strength (strength 1 of the saved file), with the
    calibration in its training record and the hashes of the calibration ``texts`` (so that evaluation
    refuses them)."""
    record.steering = record.steering.at_strength(calibration.strength)
    record.training["calibration"] = calibration.to_dict()
    record.extra["calibration_text_hashes"] = hash_texts(texts)
    return record
