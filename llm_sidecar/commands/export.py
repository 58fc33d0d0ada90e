"""`lineas-llm export`: fold a steering into the weights and write a plain HF model folder."""

from __future__ import annotations

import sys

from ..options import TRANSFER_HELP, load, load_steering_for, model_args

HELP = "fold the steering into the weights; write a plain HF model folder"


def add_parser(sub) -> None:
    x = sub.add_parser("export", help=HELP)
    model_args(x)
    x.add_argument("--steering", required=True)
    x.add_argument("--strength", type=float, default=1.0)
    x.add_argument("--out", required=True, help="new folder for the exported model")
    x.add_argument("--scale-only", action="store_true", help="drop shifts that cannot be folded (not exact)")
    x.add_argument("--allow-transfer", action="store_true", help=TRANSFER_HELP)


def run(a) -> int:
    from ..export import export_folded
    from ..validate import check_export_dir

    check_export_dir(a.out)
    lm = load(a)
    steering, _ = load_steering_for(lm, a.steering, a.allow_transfer)
    a.check_signals()
    info = export_folded(lm, steering, a.out, strength=a.strength, scale_only=a.scale_only)
    sys.stdout.write(f"exported to {a.out} (max |logit diff| vs hooked: {info['max_abs_logit_diff_vs_hooked']:.2e})\n")
    return 0
