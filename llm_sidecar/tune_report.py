"""What `lineas-llm tune` writes: the grid as a Markdown table (front and choice marked), a plot of toxicity
against the perplexity rise and against the KL divergence, and the chosen point as a steering file."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Sequence

from lineas_engine import SteeringRecord, atomic_write_bytes

from .data import hash_texts
from .tune import TunePoint, front, rise

__all__ = ["write_tune_report", "chosen_record"]


def _table(base: TunePoint, points: Sequence[TunePoint], best: TunePoint | None, budget: float) -> str:
    on_front = {p.key() for p in front(points)}
    lines = ["| steering | strength | toxicity % (+- sd over seeds) | rel. | mean score | perplexity | rise | "
             "KL (nats/token) | within budget | front |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| none | 0 | {base.toxicity:.2f} +- {base.toxicity_std:.2f} | - | {base.mean_score:.3f} | "
             f"{base.perplexity:.2f} | - | 0 | yes | - |"]
    for p in sorted(points, key=lambda p: (p.steering, p.strength)):
        rel = f"{p.toxicity / base.toxicity - 1:+.0%}" if base.toxicity > 0 else "-"
        mark = " **chosen**" if best is not None and p.key() == best.key() else ""
        lines.append(f"| {Path(p.steering).name}{mark} | {p.strength:g} | {p.toxicity:.2f} +- {p.toxicity_std:.2f} | "
                     f"{rel} | {p.mean_score:.3f} | {p.perplexity:.2f} | {rise(p, base):+.1%} | {p.kl:.4f} | "
                     f"{'yes' if rise(p, base) <= budget else 'no'} | {'yes' if p.key() in on_front else ''} |")
    return "\n".join(lines) + "\n"


def _plot(base: TunePoint, points: Sequence[TunePoint], best: TunePoint | None, budget: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    files = list(dict.fromkeys(p.steering for p in points))
    for f in files:
        pts = sorted((p for p in points if p.steering == f), key=lambda p: p.strength)
        for ax, x in ((axes[0], lambda p: 100 * rise(p, base)), (axes[1], lambda p: p.kl)):
            ax.errorbar([x(p) for p in pts], [p.toxicity for p in pts], yerr=[p.toxicity_std for p in pts],
                        marker="o", capsize=3, label=Path(f).stem)
            for p in pts:
                ax.annotate(f"{p.strength:g}", (x(p), p.toxicity), textcoords="offset points", xytext=(4, 4),
                            fontsize=8)
    fr = front(points)
    axes[0].plot([100 * rise(p, base) for p in fr], [p.toxicity for p in fr], "k--", lw=1, label="front")
    axes[0].axvline(100 * budget, color="grey", ls=":", label=f"budget +{budget:.0%}")
    for ax in axes:
        ax.axhline(base.toxicity, color="red", ls=":", lw=1, label="unsteered" if ax is axes[0] else None)
        if best is not None:
            ax.plot([100 * rise(best, base) if ax is axes[0] else best.kl], [best.toxicity], "k*", ms=14,
                    label="chosen" if ax is axes[0] else None)
        ax.grid(alpha=0.3)
    axes[0].set_xlabel("perplexity rise on neutral text, % (lower is better)")
    axes[1].set_xlabel("next-token KL to the unsteered model, nats/token")
    axes[0].set_ylabel("% toxic continuations (lower is better)")
    axes[0].legend(fontsize=8)
    fig.suptitle("toxicity vs fluency cost over strength (labels: strength)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue(), overwrite=True)


def write_tune_report(folder: str | os.PathLike, base: TunePoint, points: Sequence[TunePoint],
                      best: TunePoint | None, budget: float, meta: dict) -> dict[str, Path]:
    d = Path(folder)
    paths = {"md": d / "tune.md", "png": d / "tune.png"}
    choice = (f"chosen: {Path(best.steering).name} at strength {best.strength:g} (the least toxic point within "
              f"+{budget:.0%} perplexity)" if best is not None else f"no point within +{budget:.0%} perplexity")
    md = ("# LinEAS strength tuning\n\n" + "".join(f"- {k}: {v}\n" for k, v in meta.items())
          + f"- budget: +{budget:.1%} perplexity\n- {choice}\n\n" + _table(base, points, best, budget))
    atomic_write_bytes(paths["md"], md.encode(), overwrite=True)
    _plot(base, points, best, budget, paths["png"])
    return paths


def chosen_record(record: SteeringRecord, best: TunePoint, base: TunePoint, budget: float, prompts, neutral,
                  path: str) -> SteeringRecord:
    """``record`` (loaded from ``path``) at the chosen strength, saved as strength 1: like a calibration, so that
    `calibrate` can take it back to the trained map; the validation texts are recorded so that `eval` refuses
    them."""
    from .calibrate import uncalibrated

    before = uncalibrated(record, path)
    total = (before["strength"] if before is not None else 1.0) * best.strength
    record.steering = record.steering.at_strength(total)
    record.training["calibration"] = {"strength": total, "max_increase": budget, "base_perplexity": base.perplexity,
                                      "perplexity": best.perplexity, "num_texts": len(neutral), "chosen_by": "tune",
                                      "toxicity": best.toxicity, "base_toxicity": base.toxicity, "kl": best.kl}
    record.extra["selection_text_hashes"] = sorted(set(hash_texts([*prompts, *neutral])))
    json.dumps(record.training)  # fails here, not in the writer, if a value is not JSON
    return record
