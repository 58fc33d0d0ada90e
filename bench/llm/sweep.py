"""Model selection for the detox protocol, on VALIDATION data only: the RTP prompts that are neither in the
training pool nor among the evaluation prompts, and neutral passages after the evaluation ones. Trains
one LinEAS steering per config (``optimizer:lr:steps:gamma[:group]``; ``file:PATH`` evaluates an existing
steering) and reports toxicity and perplexity at each strength, so a config can be chosen before the
held-out evaluation of ``protocol.py`` is run.

    python -m bench.llm.sweep --model smollm2 --configs adam:0.003:100:0,adam:0.0075:100:0.8 --out /tmp/sweep
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from lineas_engine import TrainConfig, atomic_write_bytes, load_steering, save_record

from .protocol import prepare_data


def parse_config(text: str) -> TrainConfig:
    """``optimizer:lr:steps:gamma[:group]`` (``group``: weight of the group-lasso term, default 1)."""
    try:
        opt, lr, steps, gamma, *group = text.split(":")
        return TrainConfig(steps=int(steps), optimizer=opt, lr=float(lr), batch_size=32, gamma=float(gamma),
                           group=float(group[0]) if group else 1.0)
    except ValueError as e:
        raise SystemExit(f"config {text!r} must be optimizer:lr:steps:gamma[:group], e.g. adam:0.003:100:0.5:0 "
                         f"({e})") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.llm.sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--configs", required=True, help="comma-separated optimizer:lr:steps:gamma[:group] or file:PATH")
    ap.add_argument("--strengths", default="1")
    ap.add_argument("--val-prompts", type=int, default=200)
    ap.add_argument("--val-neutral", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-base", action="store_true", help="skip the unsteered row (same for every config)")
    ap.add_argument("--target", default="least_toxic", help="least_toxic or statements (see protocol.prepare_data)")
    ap.add_argument("--sites", default=None, help="regex over module names (default: the family's)")
    ap.add_argument("--calibrate", type=float, default=0.0,
                    help="calibrate each config to this perplexity budget (e.g. 0.05) on the 100 validation "
                         "passages after the --val-neutral ones, then evaluate the calibrated map")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    from llm_sidecar.evaluate import evaluate_strengths
    from llm_sidecar.judges import make_judge
    from llm_sidecar.models import load_model
    from llm_sidecar.train import train_steering

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(a.model)
    judge = make_judge("profanity")
    data = prepare_data(lm, judge, target=a.target)
    val, val_neutral = data.val_prompts[: a.val_prompts], data.val_neutral[: a.val_neutral]
    cal_texts = data.val_neutral[a.val_neutral : a.val_neutral + 100]
    strengths = [float(s) for s in a.strengths.split(",")]
    rows = []
    if a.no_base:  # the unsteered row is the same for every sweep on this data: measured once elsewhere
        base = None
    else:
        base = evaluate_strengths(lm, None, val, val_neutral, seeds=[a.seed], judge=judge, label="none",
                                  show_progress=False)[0]
        rows.append({"config": "none", "strength": 0.0, "toxicity": base.toxicity, "perplexity": base.perplexity})
    for k, text in enumerate(a.configs.split(",")):
        if text.startswith("file:"):
            steering, _ = load_steering(text[5:], model=lm.model)
            seconds = None
        else:
            cfg = parse_config(text)
            record, result = train_steering(lm, data.toxic, data.clean, config=cfg, max_length=32,
                                            training_prompts=data.pool, name=f"config{k}", sites_pattern=a.sites)
            save_record(out / f"config{k}.safetensors", record)
            steering, seconds = record.steering, round(result.seconds, 1)
        cal_strength = None
        if a.calibrate > 0:
            from llm_sidecar.calibrate import calibrate_strength

            cal = calibrate_strength(lm, steering.to(lm.device), cal_texts, max_increase=a.calibrate)
            steering, cal_strength = steering.at_strength(cal.strength), cal.strength
        t = time.perf_counter()
        for r in evaluate_strengths(lm, steering.to(lm.device), val, val_neutral, strengths=strengths,
                                    seeds=[a.seed], judge=judge, label=text, show_progress=False):
            rows.append({"config": text, "strength": r.strength, "toxicity": r.toxicity,
                         "tox_rel": r.toxicity / base.toxicity - 1 if base and base.toxicity else None,
                         "perplexity": r.perplexity, "ppl_rel": r.perplexity / base.perplexity - 1 if base else None,
                         "support": r.support, "train_s": seconds, "target": a.target, "sites": a.sites,
                         "calibrated_strength": cal_strength, "eval_s": round(time.perf_counter() - t, 1)})
            print(json.dumps(rows[-1]), flush=True)
        atomic_write_bytes(out / "sweep.json", json.dumps({"val_prompts": len(val), "val_neutral": len(val_neutral),
                                                           "rows": rows}, indent=1).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
