"""`lineas-llm train`: learn a steering from source (e.g. toxic) and target (non-toxic) texts, optionally
calibrated to a perplexity budget. Defaults: scale-only maps, kept fluent on neutral texts (embedded passages
unless ``--preserve FILE``), calibrated past strength 1 when that spends the budget."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from lineas_engine import MAPS, METHODS, LineasError, TrainConfig, get_method, save_record

from ..judges import JUDGE_HELP
from ..options import chat_args, gen_args, gen_config, load, method_name, model_args, set_chat
from ..preserve import MAX_STRENGTH_PRESERVED, PRESERVE_WEIGHT
from ..recipes import DEFAULT_RECIPE, get_recipe, recipes_help

HELP = "learn a steering from source (e.g. toxic) and target (non-toxic) texts"
logger = logging.getLogger("lineas_llm")

MAX_STRENGTH_PLAIN = 1.0  # --max-strength without --preserve: never past the trained map


def add_parser(sub) -> None:
    t = sub.add_parser("train", help=HELP, description=(
        "Learn a LinEAS steering. The default (recipe 'fast', --maps scale, --preserve on embedded neutral "
        "passages, raw text) takes 10-12 minutes for a 135M model on 2 CPU cores with --calibrate-on on 100 "
        "texts (measured on SmolLM2: 10 min 42 s on one machine, 11 min 33 s on one 19 % slower; 100 steps of "
        "5.6-6.3 s, then 4 perplexity passes of 12-14 s to calibrate); see --recipe for the costs."))
    model_args(t)
    chat_args(t, training=True)
    t.add_argument("--source", help="texts to steer away from: .txt (a line each), .jsonl, .csv")
    t.add_argument("--target", help="texts to steer towards")
    t.add_argument("--source-field", help="JSONL field / CSV column of --source (e.g. comment_text)")
    t.add_argument("--target-field", help="JSONL field / CSV column of --target")
    t.add_argument("--source-where", help="keep rows with column=value in --source, e.g. toxic=1")
    t.add_argument("--target-where", help="keep rows with column=value in --target, e.g. toxic=0")
    t.add_argument("--from-prompts", help="build both sets from these prompts: continue them with the model, "
                                          "score with --judge, keep the --n most and least toxic")
    t.add_argument("--n", type=int, default=32, help="samples per side (default 32, as in the paper)")
    t.add_argument("--judge", default="profanity", help="judge for --from-prompts: " + JUDGE_HELP)
    t.add_argument("--out", required=True, help="steering file to write (.safetensors)")
    t.add_argument("--force", action="store_true", help="replace --out if it exists")
    t.add_argument("--method", type=method_name, choices=sorted(METHODS), default="lineas",
                   help="; ".join(f"{k}: {m.description}" for k, m in METHODS.items()) + " ('layerwise' also accepted)")
    t.add_argument("--sites", help="regex over module names (default: the paper's post norms for the family)")
    t.add_argument("--recipe", default=DEFAULT_RECIPE, help=f"training recipe: {recipes_help()}")
    t.add_argument("--steps", type=int, default=None, help="override the recipe's steps")
    t.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    t.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default=None, help="override the recipe's")
    t.add_argument("--sparsity", type=float, default=0.0, help="gamma of the sparse group lasso (0 = dense)")
    t.add_argument("--maps", choices=MAPS, default=None,
                   help="what is learnt of each map h -> w*h + b: scale (default of the iterative methods; the "
                        "closed-form layer-wise method fits affine maps): b held at 0, costs far less fluency "
                        "for the same detox and exports exactly into any architecture's norm weights), affine (both, "
                        "the paper), shift (w held at 1)")
    t.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    t.add_argument("--patience", type=int, default=0, help="stop when the loss has not improved for N steps")
    t.add_argument("--max-length", type=int, default=64, help="tokens per training text")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--calibrate-on", metavar="FILE",
                   help="neutral texts (not your evaluation texts): save the map at the largest strength whose "
                        "perplexity on them rises by at most --max-ppl-increase (strength 1 of the file = that map)")
    t.add_argument("--max-ppl-increase", type=float, default=0.1, help="utility budget of --calibrate-on (0.1 = +10%%)")
    t.add_argument("--preserve", metavar="FILE",
                   help="neutral texts to keep fluent while training (default: 64 passages of novels embedded "
                        "with the offline data; never your evaluation or --calibrate-on texts): adds --preserve-weight "
                        "x the KL divergence of the steered model's next-token distribution from the unsteered "
                        "one's on them to the OT loss (not in the paper; about 2x the training time)")
    t.add_argument("--no-preserve", action="store_true",
                   help="train on the OT loss alone, as in the paper (about half the time; calibration then keeps "
                        "less of the map)")
    t.add_argument("--preserve-weight", type=float, default=None,
                   help=f"weight of the --preserve term (default {PRESERVE_WEIGHT:g})")
    t.add_argument("--max-strength", type=float, default=None,
                   help=f"largest strength --calibrate-on may keep (default {MAX_STRENGTH_PRESERVED:g} with "
                        f"--preserve, whose map costs little at strength 1, {MAX_STRENGTH_PLAIN:g} without: never "
                        "past the trained map)")
    gen_args(t)


def _config(a) -> TrainConfig:
    rec = get_recipe(a.recipe)
    return TrainConfig(steps=rec.steps if a.steps is None else a.steps, lr=rec.lr if a.lr is None else a.lr,
                       optimizer=a.optimizer or rec.optimizer,
                       batch_size=rec.batch_size if a.batch_size is None else a.batch_size,
                       gamma=a.sparsity, seed=a.seed, patience=a.patience,
                       maps=a.maps or ("scale" if get_method(a.method).iterative else "affine"))


def _preserve_texts(a) -> tuple[list[str] | None, str]:
    """The --preserve texts and where they come from; None when off (--no-preserve, or a closed-form method)."""
    from ..data import read_texts, require_samples
    from ..preserve import embedded_preserve_texts

    if a.no_preserve and (a.preserve or a.preserve_weight is not None):
        raise LineasError("--no-preserve turns the fluency term off: drop --preserve / --preserve-weight, or "
                          "--no-preserve")
    iterative = get_method(a.method).iterative
    if a.preserve and not iterative:
        raise LineasError(f"--preserve needs an iterative method such as --method lineas (the {a.method} method is "
                          "fitted in closed form)")
    if a.no_preserve or not iterative:
        return None, "off"
    if a.preserve:
        texts = read_texts(a.preserve, what="--preserve")
        require_samples(texts, "--preserve")
        return texts, f"{len(texts)} --preserve texts"
    texts = embedded_preserve_texts()
    return texts, f"{len(texts)} embedded neutral passages"


def run(a) -> int:
    from ..data import check_disjoint, hash_texts, read_texts, require_samples
    from ..progress import progress_bar
    from ..train import train_steering
    from ..validate import check_map, check_out_file, check_scorable, save_or_rescue

    out = check_out_file(a.out, a.force)
    if a.from_prompts and (a.source or a.target):
        raise LineasError("give either --from-prompts or --source and --target, not both")
    if not a.from_prompts and not (a.source and a.target):
        raise LineasError("train needs --source and --target files (or --from-prompts FILE)")
    cfg = _config(a)
    if a.source:
        source = read_texts(a.source, a.source_field, a.source_where, what="--source")
        target = read_texts(a.target, a.target_field, a.target_where, what="--target")
        require_samples(source, "--source")
        require_samples(target, "--target")
        prompts = []
    else:
        prompts = read_texts(a.from_prompts, what="--from-prompts")
    if a.max_strength is not None and not a.calibrate_on:
        raise LineasError(f"--max-strength {a.max_strength:g} only applies to --calibrate-on FILE: add the neutral "
                          f"texts to calibrate on, or drop --max-strength")
    preserve, preserve_note = _preserve_texts(a)
    max_strength = a.max_strength or (MAX_STRENGTH_PRESERVED if preserve is not None else MAX_STRENGTH_PLAIN)
    calib = read_texts(a.calibrate_on, what="--calibrate-on") if a.calibrate_on else None
    if calib is not None and preserve is not None:
        check_disjoint(calib, hash_texts(preserve), what="--calibrate-on texts", used_for="--preserve",
                       fix="calibrate on other neutral texts than the ones training keeps fluent (or give "
                           "--preserve FILE)")
    if calib is not None:
        from ..calibrate import check_budget

        require_samples(calib, "--calibrate-on", 1)
        check_budget(a.max_ppl_increase, max_strength)  # before the model loads
    if a.chat is None:  # raw text unless asked: see chat_args(training=True)
        a.chat = a.system is not None
    lm = load(a)
    set_chat(lm, a)
    if calib is not None:
        check_scorable(lm, calib, "--calibrate-on")  # before training, not after
    if preserve is not None:
        check_scorable(lm, preserve, "--preserve")
    if prompts:
        from ..build import build_sets
        from ..judges import make_judge

        source, target = build_sets(lm, prompts, a.n, make_judge(a.judge), gen_config(a), seed=a.seed)
    with progress_bar(cfg.steps, "train", check=a.check_signals) as bar:
        record, r = train_steering(lm, source, target, method=a.method, sites_pattern=a.sites, config=cfg,
                                   max_length=a.max_length, on_step=bar, training_prompts=prompts,
                                   name=Path(out).stem, preserve=preserve or (), preserve_weight=a.preserve_weight)
    check_map(record.steering)  # finite and sane before calibrating or saving it
    if r.losses and not r.losses[-1] <= 10 * r.losses[0]:
        logger.warning("the loss rose from %.4g to %.4g: the training diverged; retrain with a lower --lr",
                       r.losses[0], r.losses[-1])
    cal_note = ""
    if calib is not None:
        from ..calibrate import calibrate_record

        cal = calibrate_record(lm, record, calib, max_increase=a.max_ppl_increase, check=a.check_signals,
                               max_strength=max_strength)
        cal_note = (f"; calibrated to strength {cal.strength:.3f} (perplexity {cal.base_perplexity:.2f} -> "
                    f"{cal.perplexity:.2f} on {cal.num_texts} --calibrate-on texts)")
    a.check_signals()
    save_or_rescue(lambda p: save_record(p, record, overwrite=a.force), out)
    loss = f", loss {r.losses[0]:.4g} -> {r.losses[-1]:.4g} in {r.steps} steps" if r.steps else ""
    fmt = "the chat template" if lm.chat is not None else "raw text"
    sys.stdout.write(f"wrote {out} ({record.method}, {cfg.maps} maps, {len(record.steering.sites)} sites, trained on "
                     f"{fmt}, preserve: {preserve_note}, {r.seconds:.1f} s{loss}, whole-set OT loss "
                     f"{r.eval_before:.4g} -> {r.eval_after:.4g}, support {record.steering.support():.1%}{cal_note})\n")
    return 0
