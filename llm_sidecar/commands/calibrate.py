"""`lineas-llm calibrate`: save a steering at the largest strength within a perplexity budget."""

from __future__ import annotations

import sys
from pathlib import Path

from lineas_engine import LineasError, save_record

from ..options import TRANSFER_HELP, check_map, load, model_args

HELP = "save a steering at the largest strength within a perplexity budget (recalibrate without training again)"


def add_parser(sub) -> None:
    c = sub.add_parser("calibrate", help=HELP)
    model_args(c)
    c.add_argument("--steering", required=True, help="steering file to calibrate (a calibrated one is first "
                                                     "taken back to its trained map)")
    c.add_argument("--calibrate-on", required=True, metavar="FILE",
                   help="neutral texts (not your evaluation texts) to measure perplexity on")
    c.add_argument("--max-ppl-increase", type=float, default=0.1, help="utility budget (0.1 = +10%%)")
    c.add_argument("--max-strength", type=float, default=1.0,
                   help="largest strength to keep, relative to the trained map (default 1; e.g. 2 to extrapolate a "
                        "map that is under the budget at strength 1)")
    c.add_argument("--out", required=True, help="steering file to write (.safetensors)")
    c.add_argument("--force", action="store_true", help="replace --out if it exists")
    c.add_argument("--allow-transfer", action="store_true", help=TRANSFER_HELP)


def run(a) -> int:
    from lineas_engine import load_record

    from ..calibrate import calibrate_record, uncalibrated
    from ..data import check_disjoint, read_texts, require_samples
    from ..validate import check_out_file, check_scorable, hashes_of, save_or_rescue

    out = check_out_file(a.out, a.force)
    if out.resolve() == Path(a.steering).expanduser().resolve():
        raise LineasError(f"--out {a.out!r} is the --steering file; write the calibrated map to a new file")
    texts = read_texts(a.calibrate_on, what="--calibrate-on")
    require_samples(texts, "--calibrate-on", 1)
    lm = load(a)
    check_scorable(lm, texts, "--calibrate-on")
    record = load_record(a.steering, model=lm.model, architecture=lm.architecture, allow_transfer=a.allow_transfer)
    check_map(record.steering, a.steering)
    hashes_of(record, "calibration_text_hashes", a.steering)  # intact before they are merged with the new ones
    check_disjoint(texts, hashes_of(record, "preserve_text_hashes", a.steering), what="--calibrate-on texts",
                   used_for="keep this steering fluent in training (--preserve)",
                   fix="calibrate on other neutral texts")
    before = uncalibrated(record, a.steering)
    cal = calibrate_record(lm, record, texts, max_increase=a.max_ppl_increase, check=a.check_signals,
                           max_strength=a.max_strength)
    a.check_signals()
    save_or_rescue(lambda p: save_record(p, record, overwrite=a.force), out)
    was = f" (it was at {before['strength']:.3f})" if before is not None else ""
    rise = cal.perplexity / cal.base_perplexity - 1
    sys.stdout.write(f"wrote {out}: the trained map at strength {cal.strength:.3f}{was}, perplexity "
                     f"{cal.base_perplexity:.2f} -> {cal.perplexity:.2f} ({rise:+.1%}, budget "
                     f"+{a.max_ppl_increase:.1%}) on {cal.num_texts} --calibrate-on texts\n")
    return 0
