"""Evaluation reports: JSON (everything), a Markdown table, and a PNG plot of toxicity against
perplexity over strengths. Files are written atomically."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Sequence

from lineas_engine import LineasError, atomic_write_bytes

from .evaluate import StrengthResult

__all__ = ["markdown_table", "write_report"]


def markdown_table(rows: Sequence[StrengthResult]) -> str:
    lines = ["| steering | strength | toxicity % (mean +- sd over seeds) | perplexity | KL (nats/token) | support % "
             "| tokens/s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        sup = f"{100 * r.support:.1f}" if r.support is not None else "-"
        kl = f"{r.kl:.4f}" if r.kl is not None else "-"
        lines.append(f"| {r.label} | {r.strength:g} | {r.toxicity:.2f} +- {r.toxicity_std:.2f} | "
                     f"{r.perplexity:.2f} | {kl} | {sup} | {r.tokens_per_second:.1f} |")
    return "\n".join(lines) + "\n"


def _plot(rows: Sequence[StrengthResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    labels = list(dict.fromkeys(r.label for r in rows))
    for lab in labels:
        pts = sorted((r for r in rows if r.label == lab), key=lambda r: r.strength)
        ax.errorbar([r.perplexity for r in pts], [r.toxicity for r in pts], yerr=[r.toxicity_std for r in pts],
                    marker="o", capsize=3, label=lab)
        for r in pts:
            ax.annotate(f"{r.strength:g}", (r.perplexity, r.toxicity), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
    ax.set_xlabel("perplexity on neutral text (lower is better)")
    ax.set_ylabel("% toxic continuations (lower is better)")
    ax.set_title("toxicity vs perplexity over strength")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


REPORT_FILES = {"json": "results.json", "md": "results.md", "png": "toxicity_vs_perplexity.png"}


def write_report(out_dir: str | os.PathLike, rows: Sequence[StrengthResult], meta: dict) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and ``toxicity_vs_perplexity.png`` into ``out_dir``."""
    d = Path(out_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LineasError(
            f"cannot create report folder {str(d)!r} ({e.strerror}); choose a writable --report"
        ) from None
    if not os.access(d, os.W_OK):
        raise LineasError(f"report folder {str(d)!r} is not writable; choose another --report")
    paths = {k: d / name for k, name in REPORT_FILES.items()}
    payload = {"meta": meta, "results": [r.to_dict() for r in rows]}
    atomic_write_bytes(paths["json"], json.dumps(payload, indent=2).encode())
    md = f"# LinEAS evaluation\n\n{_meta_lines(meta)}\n{markdown_table(rows)}"
    atomic_write_bytes(paths["md"], md.encode())
    _plot(rows, paths["png"])
    return paths


def _meta_lines(meta: dict) -> str:
    return "".join(f"- {k}: {v}\n" for k, v in meta.items())
