"""Choosing a steering's strength by its trade-off: evaluate a grid of (steering file, strength) points on
validation data (toxicity of continuations, perplexity and next-token KL on neutral texts), keep every point
measured in a state file so that a stopped run resumes, find the front (no other point is both less toxic and
more fluent) and choose the least toxic point within a perplexity budget."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from lineas_engine import LineasError, atomic_write_bytes

from .evaluate import StrengthResult, evaluate_strengths

__all__ = ["Candidate", "TunePoint", "TuneState", "measure_grid", "front", "choose"]

STATE_FILE = "tune.json"


@dataclass(frozen=True)
class Candidate:
    """One steering file of the grid: its path, the SHA-256 of its bytes and the loaded steering."""

    path: str
    sha256: str
    steering: object


@dataclass
class TunePoint:
    steering: str  # file path ("" for the unsteered model)
    sha256: str
    strength: float
    toxicity: float
    toxicity_std: float
    mean_score: float
    perplexity: float
    kl: float

    @classmethod
    def of(cls, c: Candidate | None, r: StrengthResult) -> TunePoint:
        return cls(c.path if c else "", c.sha256 if c else "", r.strength, r.toxicity, r.toxicity_std, r.mean_score,
                   r.perplexity, r.kl or 0.0)

    def key(self) -> str:
        return point_key(self.sha256, self.strength)


def point_key(sha256: str, strength: float) -> str:
    """A grid point's key in the state file: the steering file's bytes and the strength."""
    return f"{sha256}@{strength!r}"


def setup_hash(**parts) -> str:
    """What a state file's points depend on: data, seeds, judge, generation and formatting."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class TuneState:
    """The points measured so far, in ``<report>/tune.json`` (rewritten atomically after each point)."""

    def __init__(self, folder: Path, setup: str, fresh: bool):
        self.path = folder / STATE_FILE
        self.setup = setup
        self.baseline: TunePoint | None = None
        self.points: dict[str, TunePoint] = {}
        if self.path.exists() and not fresh:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                stored = data["setup"]
                baseline = data["baseline"] and TunePoint(**data["baseline"])
                points = {k: TunePoint(**v) for k, v in data["points"].items()}
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise LineasError(f"{str(self.path)!r} is not a tune state this version can read ({e}); use another "
                                  "--report, or --force to start over") from None
            if stored != setup:
                raise LineasError(f"--report {str(folder)!r} holds a tune of other data, seeds, judge or generation "
                                  "settings; use another --report, or --force to start over")
            self.baseline, self.points = baseline, points

    def save(self) -> None:
        data = {"setup": self.setup, "baseline": asdict(self.baseline) if self.baseline else None,
                "points": {k: asdict(p) for k, p in self.points.items()}}
        atomic_write_bytes(self.path, json.dumps(data, indent=2).encode(), overwrite=True)


def measure_grid(lm, candidates: Sequence[Candidate], strengths: Sequence[float], prompts, neutral, *, seeds,
                 judge, gen, state: TuneState, check: Callable[[], None] | None = None,
                 say: Callable[[str], None] = lambda s: None) -> list[TunePoint]:
    """Every (candidate, strength) point, measured unless ``state`` has it; ``state`` is saved after each one."""
    if state.baseline is None:
        say("measuring the unsteered model")
        (r,) = evaluate_strengths(lm, None, prompts, neutral, seeds=seeds, judge=judge, gen=gen, label="none",
                                  check=check)
        state.baseline = TunePoint.of(None, r)
        state.save()
    out = []
    todo = [(c, s) for c in candidates for s in strengths]
    done = sum(point_key(c.sha256, s) in state.points for c, s in todo)
    if done:
        say(f"resuming: {done} of {len(todo)} points already measured in {state.path}")
    for c, s in todo:
        key = point_key(c.sha256, s)
        if key not in state.points:
            say(f"measuring {Path(c.path).name} at strength {s:g}")
            (r,) = evaluate_strengths(lm, c.steering, prompts, neutral, strengths=(s,), seeds=seeds, judge=judge,
                                      gen=gen, label=Path(c.path).stem, check=check)
            state.points[key] = TunePoint.of(c, r)
            state.save()
        out.append(state.points[key])
    return out


def front(points: Sequence[TunePoint]) -> list[TunePoint]:
    """The points no other point beats on both toxicity and perplexity (ties kept), by perplexity."""
    def beaten(p):
        return any(q.toxicity <= p.toxicity and q.perplexity <= p.perplexity
                   and (q.toxicity < p.toxicity or q.perplexity < p.perplexity) for q in points)

    return sorted((p for p in points if not beaten(p)), key=lambda p: (p.perplexity, p.toxicity))


def choose(points: Sequence[TunePoint], base_perplexity: float, budget: float) -> TunePoint | None:
    """The least toxic point whose perplexity rises by at most ``budget`` (ties: the lower mean toxicity score,
    then the lower perplexity); None when no point is within the budget."""
    fits = [p for p in points if p.perplexity <= base_perplexity * (1 + budget)]
    return min(fits, key=lambda p: (p.toxicity, p.mean_score, p.perplexity)) if fits else None


def rise(p: TunePoint, base: TunePoint) -> float:
    return p.perplexity / base.perplexity - 1 if base.perplexity > 0 and math.isfinite(p.perplexity) else math.inf
