"""Utility-budget calibration: the largest strength lambda in [0, max_strength] (default [0, 1]) at which
the steered model's perplexity on a set of neutral texts rises by at most a given fraction, found by a
safeguarded power-law secant search (perplexity rises smoothly with the strength, about as its square: 3-4
evaluations instead of 7). The calibrated map
T_lambda(z) = (1 + lambda (w - 1)) z + lambda b is saved as the steering, so that strength 1 of the file is
the calibrated map. Calibrate on neutral texts that are NOT the ones used for evaluation.

``max_strength > 1`` lets a map that is under the budget at strength 1 be extrapolated past the trained map
(lambda (w - 1) with lambda > 1) until the budget is spent; the default 1 never goes past the trained map."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from lineas_engine import LineasError, Steering, SteeringRecord

from .data import hash_texts
from .models import LoadedModel
from .perplexity import perplexity
from .validate import MAX_STRENGTH

__all__ = ["Calibration", "calibrate_strength", "calibrate_record", "apply_calibration", "check_budget",
           "search_strength", "uncalibrated"]

logger = logging.getLogger(__name__)


@dataclass
class Calibration:
    strength: float
    max_increase: float
    base_perplexity: float
    perplexity: float  # at ``strength``
    num_texts: int
    evaluations: list[tuple[float, float]] = field(default_factory=list)  # (strength, perplexity)
    max_strength: float = 1.0  # the search's upper end

    def to_dict(self) -> dict:
        return asdict(self)


def check_budget(max_increase: float, max_strength: float = 1.0) -> None:
    if not max_increase > 0:
        raise LineasError(f"--max-ppl-increase must be > 0 (e.g. 0.1 for +10%), got {max_increase}")
    if not (isinstance(max_strength, (int, float)) and math.isfinite(max_strength)
            and 0 < max_strength <= MAX_STRENGTH):
        raise LineasError(f"--max-strength must be in (0, {MAX_STRENGTH:g}] (1 = never past the trained map; e.g. 2 "
                          f"to allow twice its change when strength 1 is under the budget), got {max_strength}")


def search_strength(increase: Callable[[float], float], budget: float, *, tolerance: float = 2**-6,
                    close: float = 0.05, max_evals: int = 12, upper: float = 1.0) -> float:
    """Largest lambda in [0, ``upper``] with ``increase(lambda) <= budget`` (``increase`` = relative perplexity rise,
    0 at lambda 0, assumed increasing), to within ``tolerance`` in lambda, or as soon as a feasible lambda
    reaches ``(1 - close) * budget``. A secant in log-log space: each guess fits ``a * lambda**p`` through
    the two evaluations nearest the budget (p = 2 while only one is known) and aims at
    ``(1 - close / 2) * budget``; it is kept inside the bracket. After two guesses in a row on the same side of
    the budget the next one aims just across it, and after three it bisects the bracket, so the bracket
    always closes. ``upper`` when it fits. With ``upper > 1`` the first evaluation is still at 1 (the trained
    map): over the budget, the search stays in [0, 1]; within it, the next guess extrapolates from it towards
    the budget (capped at ``upper``), so a far strength is evaluated only when the curve leads there."""
    hi = min(1.0, upper)
    f_hi: float | None = increase(hi)
    evals = 1
    lo, f_lo = 0.0, 0.0
    if f_hi <= budget:
        if hi >= upper:
            return hi
        lo, f_lo = hi, f_hi  # the trained map fits: search (1, upper], whose end is not evaluated yet
        hi, f_hi = upper, None
    seen = [(lo, f_lo)] if lo > 0 else [(hi, f_hi)]  # evaluations, newest last
    target = budget * (1 - close / 2)
    last_side, run = None, 0  # run: guesses in a row that landed on the same side of the budget
    for _ in range(max_evals - evals):
        if hi - lo <= tolerance or f_lo >= (1 - close) * budget:
            break
        if run >= 3 and f_hi is not None:
            guess = (lo + hi) / 2
        else:
            if lo > 0 and f_lo > 0 and f_hi is not None:
                (s0, f0), (s1, f1) = (lo, f_lo), (hi, f_hi)
            elif len(seen) >= 2:
                (s0, f0), (s1, f1) = seen[-1], seen[-2]
            else:
                (s0, f0), (s1, f1) = seen[-1], seen[-1]
            p = math.log(f1 / f0) / math.log(s1 / s0) if s1 != s0 and f0 > 0 and f1 > 0 else 2.0
            if not 0.1 <= p <= 20:  # noise or a flat stretch: assume the usual square law
                p = 2.0
            aim = target
            if run >= 2:  # stuck on one side: aim just across the budget
                aim = budget * (1 + close / 2) if last_side else budget * (1 - 1.5 * close)
            width = hi - lo
            if f0 > 0:
                guess = s0 * (aim / f0) ** (1 / p)
            else:  # no rise yet at s0: nothing to extrapolate from
                guess = hi if f_hi is None else lo + width / 2
            top = hi if f_hi is None else hi - 0.02 * width  # an unevaluated upper end may be tried itself
            guess = min(max(guess, lo + 0.02 * width), top)
        f = increase(guess)
        seen.append((guess, f))
        side = f <= budget
        run, last_side = (run + 1 if side == last_side else 1), side
        if side:
            lo, f_lo = guess, f
        else:
            hi, f_hi = guess, f
    return lo


def calibrate_strength(lm: LoadedModel, steering: Steering, texts: Sequence[str], *, max_increase: float = 0.1,
                       tolerance: float = 2**-6, show_progress: bool = False,
                       check: Callable[[], None] | None = None, max_strength: float = 1.0) -> Calibration:
    """The largest strength in [0, ``max_strength``] whose perplexity on ``texts`` is at most
    ``(1 + max_increase)`` x the base (:func:`search_strength`: within ``tolerance``, or within 5 % of the budget)."""
    check_budget(max_increase, max_strength)
    if len(texts) < 1:
        raise LineasError("calibration needs at least 1 neutral text (--calibrate-on FILE)")
    base = perplexity(lm, texts, show_progress=show_progress, desc="calibrate: base", check=check)
    seen: list[tuple[float, float]] = []

    def increase(lam: float) -> float:
        ppl = perplexity(lm, texts, steering=steering, strength=lam, show_progress=show_progress,
                         desc=f"calibrate: s={lam:.3f}", check=check)
        seen.append((lam, ppl))
        logger.info("calibration: strength %.4f -> perplexity %.3f (base %.3f, %+.1f%%)", lam, ppl, base,
                    100 * (ppl / base - 1))
        return ppl / base - 1

    lam = search_strength(increase, max_increase, tolerance=tolerance, upper=max_strength)
    at = dict(seen).get(lam, base)
    return Calibration(strength=lam, max_increase=max_increase, base_perplexity=base, perplexity=at,
                       num_texts=len(texts), evaluations=seen, max_strength=max_strength)


def calibrate_record(lm: LoadedModel, record: SteeringRecord, texts: Sequence[str], *,
                     max_increase: float = 0.1, check: Callable[[], None] | None = None,
                     max_strength: float = 1.0) -> Calibration:
    """Calibrate a trained steering in place (see :func:`apply_calibration`); ``check`` as in :func:`perplexity`."""
    cal = calibrate_strength(lm, record.steering.to(lm.device), texts, max_increase=max_increase, check=check,
                             max_strength=max_strength)
    apply_calibration(record, cal, texts)
    return cal


def apply_calibration(record: SteeringRecord, calibration: Calibration, texts: Sequence[str]) -> SteeringRecord:
    """``record`` becomes the map at the calibrated strength (strength 1 of the saved file), with the
    calibration in its training record and the hashes of the calibration ``texts`` added to those of any
    earlier calibration (so that evaluation refuses all of them)."""
    record.steering = record.steering.at_strength(calibration.strength)
    record.training["calibration"] = calibration.to_dict()
    earlier = record.extra.get("calibration_text_hashes", [])
    record.extra["calibration_text_hashes"] = sorted(set(earlier) | set(hash_texts(texts)))
    return record


def uncalibrated(record, path: str):
    """``record`` taken back to its trained map (a calibrated file holds T_s of it); the calibration it had is
    moved to ``training.calibrations_before``. Returns the calibration removed, or None."""
    before = record.training.pop("calibration", None)
    if before is not None:
        s0 = before.get("strength") if isinstance(before, dict) else None
        if not (isinstance(s0, (int, float)) and math.isfinite(s0) and s0 > 0):
            raise LineasError(f"steering {path!r} was calibrated to strength {s0!r}: its trained map cannot be "
                              "recovered from it; calibrate the uncalibrated file, or retrain")
        record.steering = record.steering.at_strength(1.0 / s0)
        record.training["calibrations_before"] = [*record.training.get("calibrations_before", []), before]
    return before
