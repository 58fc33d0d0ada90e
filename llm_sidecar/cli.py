"""`lineas-llm`: learn, apply, evaluate and export LinEAS detox steering for Hugging Face causal LMs.

Commands only parse arguments and delegate; errors become one line on stderr (LINEAS_DEBUG=1 shows the
traceback) and a non-zero exit code."""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
from pathlib import Path

from lineas_engine import MAPS, METHODS, LineasError, TrainConfig, get_method, load_steering, save_record

from .judges import JUDGE_HELP
from .preserve import PRESERVE_WEIGHT

__all__ = ["main", "build_parser"]

logger = logging.getLogger("lineas_llm")


def _floats(s: str) -> list[float]:
    try:
        return [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of numbers, e.g. 0,0.5,1") from None


def _ints(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of integers, e.g. 0,1,2") from None


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="hub id, local HF folder, .gguf file, or embedded: smollm2, gemma3-270m")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16")
    _device_map_args(p)


def _chat_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="format texts with the tokenizer's chat template (default: on when it has one; with "
                        "--steering: as the steering was trained)")
    p.add_argument("--system", default=None, help="system prompt for --chat (default: the template's own)")


def _device_map_args(p: argparse.ArgumentParser) -> None:
    from .devices import DEVICE_MAPS

    p.add_argument("--device-map", default=None, metavar="MAP",
                   help=f"spread the model over devices with accelerate ({', '.join(DEVICE_MAPS)}); "
                        "replaces --device")
    p.add_argument("--max-memory", default=None, metavar="SPEC",
                   help="with --device-map: memory per device, e.g. 0=20GiB,1=20GiB,cpu=60GiB")
    p.add_argument("--offload-folder", default=None, metavar="DIR",
                   help="with --device-map: folder for weights that fit nowhere (disk offload)")
    p.add_argument("--load-in", choices=["8bit", "4bit"], default=None,
                   help="quantized loading with bitsandbytes (CUDA); training and export need full weights")


def _gen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.3)
    p.add_argument("--repetition-penalty", type=float, default=1.2)
    p.add_argument("--gen-batch-size", type=int, default=32)


_TRANSFER_HELP = ("apply a steering made for a model of another structure (e.g. the base of this fine-tune); "
                  "sites and widths must still fit")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lineas-llm", description=__doc__.split("\n\n")[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = ap.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="learn a steering from source (e.g. toxic) and target (non-toxic) texts")
    _model_args(t)
    _chat_args(t)
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
    t.add_argument("--method", type=_method_name, choices=sorted(METHODS), default="lineas",
                   help="; ".join(f"{k}: {m.description}" for k, m in METHODS.items()) + " ('layerwise' also accepted)")
    t.add_argument("--sites", help="regex over module names (default: the paper's post norms for the family)")
    from .recipes import DEFAULT_RECIPE, recipes_help

    t.add_argument("--recipe", default=DEFAULT_RECIPE, help=f"training recipe: {recipes_help()}")
    t.add_argument("--steps", type=int, default=None, help="override the recipe's steps")
    t.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    t.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default=None, help="override the recipe's")
    t.add_argument("--sparsity", type=float, default=0.0, help="gamma of the sparse group lasso (0 = dense)")
    t.add_argument("--maps", choices=MAPS, default="affine",
                   help="what is learnt of each map h -> w*h + b: affine (both, the paper), scale (b held at 0: "
                        "a milder map that exports exactly into any architecture's norm weights), shift (w held at 1)")
    t.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    t.add_argument("--patience", type=int, default=0, help="stop when the loss has not improved for N steps")
    t.add_argument("--max-length", type=int, default=64, help="tokens per training text")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--calibrate-on", metavar="FILE",
                   help="neutral texts (not your evaluation texts): save the map at the largest strength whose "
                        "perplexity on them rises by at most --max-ppl-increase (strength 1 of the file = that map)")
    t.add_argument("--max-ppl-increase", type=float, default=0.1, help="utility budget of --calibrate-on (0.1 = +10%%)")
    t.add_argument("--preserve", metavar="FILE",
                   help="neutral texts to keep fluent while training (not your evaluation or --calibrate-on texts): "
                        "adds --preserve-weight x the KL divergence of the steered model's next-token distribution "
                        "from the unsteered one's on them to the OT loss (not in the paper; about 2x the training "
                        "time). The map then costs little at strength 1: add --max-strength (e.g. 4) to --calibrate-on "
                        "to spend the perplexity budget")
    t.add_argument("--preserve-weight", type=float, default=None,
                   help=f"weight of the --preserve term (default {PRESERVE_WEIGHT:g})")
    t.add_argument("--max-strength", type=float, default=1.0,
                   help="largest strength --calibrate-on may keep (default 1: never past the trained map; e.g. 2 lets "
                        "a map that is under the budget at strength 1 be extrapolated until the budget is spent)")
    _gen_args(t)

    g = sub.add_parser("generate", help="continue prompts, optionally under a steering")
    _model_args(g)
    _chat_args(g)
    g.add_argument("--steering")
    g.add_argument("--strength", type=float, default=1.0)
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt")
    src.add_argument("--prompts", help="file of prompts (.txt a line each, .jsonl, .csv)")
    g.add_argument("--field", help="JSONL field / CSV column of --prompts")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", help="write JSONL here instead of stdout")
    g.add_argument("--force", action="store_true", help="replace --out if it exists")
    g.add_argument("--allow-transfer", action="store_true", help=_TRANSFER_HELP)
    _gen_args(g)

    e = sub.add_parser("eval", help="toxicity of continuations and perplexity on neutral text over strengths")
    _model_args(e)
    _chat_args(e)
    e.add_argument("--steering")
    e.add_argument("--prompts", required=True, help="held-out prompts (never the training prompts)")
    e.add_argument("--neutral", required=True, help="neutral sentences for perplexity")
    e.add_argument("--field", help="JSONL field / CSV column of --prompts")
    e.add_argument("--strengths", type=_floats, default=[0.0, 0.5, 1.0])
    e.add_argument("--seeds", type=_ints, default=[0, 1])
    e.add_argument("--max-prompts", type=int, default=0, help="use the first N prompts (0 = all)")
    e.add_argument("--max-neutral", type=int, default=0, help="use the first N neutral sentences (0 = all)")
    e.add_argument("--judge", default="profanity", help=JUDGE_HELP)
    e.add_argument("--report", required=True, help="folder for results.json / results.md / the PNG plot")
    e.add_argument("--label", default=None, help="name of this steering in the report")
    e.add_argument("--force", action="store_true", help="replace the result files of an existing --report")
    e.add_argument("--allow-transfer", action="store_true", help=_TRANSFER_HELP)
    _gen_args(e)

    c = sub.add_parser("calibrate", help="save a steering at the largest strength within a perplexity budget "
                                         "(recalibrate a trained file without training again)")
    _model_args(c)
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
    c.add_argument("--allow-transfer", action="store_true", help=_TRANSFER_HELP)

    x = sub.add_parser("export", help="fold the steering into the weights; write a plain HF model folder")
    _model_args(x)
    x.add_argument("--steering", required=True)
    x.add_argument("--strength", type=float, default=1.0)
    x.add_argument("--out", required=True, help="new folder for the exported model")
    x.add_argument("--scale-only", action="store_true", help="drop shifts that cannot be folded (not exact)")
    x.add_argument("--allow-transfer", action="store_true", help=_TRANSFER_HELP)

    d = sub.add_parser("demo", help="offline end-to-end demo on the embedded SmolLM2-135M-Instruct")
    d.add_argument("--model", default="smollm2", help=argparse.SUPPRESS)
    d.add_argument("--n", type=int, default=32)
    d.add_argument("--steps", type=int, default=100)
    d.add_argument("--eval-prompts", type=int, default=64)
    d.add_argument("--neutral", type=int, default=100)
    d.add_argument("--out", default=None, help="new folder for the steering, the exported model and the report "
                                               "(default: ./lineas-demo, or lineas-demo-N if that exists)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--calibrate", type=int, default=50,
                   help="neutral sentences (after the --neutral ones) to calibrate the strength on; 0 = off")
    d.add_argument("--max-ppl-increase", type=float, default=0.1)
    return ap


def _gen_config(a):
    from .generate import GenConfig

    try:
        return GenConfig(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p,
                         repetition_penalty=a.repetition_penalty, batch_size=a.gen_batch_size)
    except ValueError as e:
        raise LineasError(str(e)) from None


def _method_name(value: str) -> str:
    """--method: a registered method, by its name or an older spelling (``layerwise``)."""
    try:
        return get_method(value).name
    except LineasError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _load(a):
    """The model for ``--model`` on ``--device`` or spread by ``--device-map`` (see devices.py)."""
    from .models import load_model

    dm = getattr(a, "device_map", None)
    if dm is None and (a.max_memory or a.offload_folder):
        raise LineasError("--max-memory / --offload-folder need --device-map (e.g. --device-map auto)")
    if dm is None and a.load_in is None:
        lm = load_model(a.model, a.device, a.dtype)
    else:
        lm = load_model(a.model, a.device, a.dtype, device_map=dm or "auto", max_memory=a.max_memory,
                        offload_folder=a.offload_folder, load_in=a.load_in)
    a.check_signals()  # loading is where a library's bare ``except:`` swallowed a SIGTERM (stop 15)
    return lm


def _set_chat(lm, a, meta=None) -> None:
    """``lm.chat`` from --chat/--system (train), or as recorded in the steering file (generate / eval)."""
    from .chat import chat_from_meta, resolve_chat

    if meta is None:
        lm.chat = resolve_chat(lm.tokenizer, a.chat, a.system, model=a.model)
    else:
        lm.chat = chat_from_meta(lm.tokenizer, meta.extra, a.chat, a.system, model=a.model)


def _check_map(steering, path: str) -> None:
    from .validate import check_map

    check_map(steering, what=f"steering {path!r}", fix="it comes from a diverged training: retrain with a lower --lr")


def _load_steering(lm, path: str, allow_transfer: bool = False):
    steering, meta = load_steering(path, model=lm.model, architecture=lm.architecture, allow_transfer=allow_transfer)
    _check_map(steering, path)
    return steering.to(lm.device), meta


def cmd_train(a) -> int:
    from .data import read_texts, require_samples
    from .progress import progress_bar
    from .train import train_steering
    from .validate import check_map, check_out_file, check_scorable, save_or_rescue

    out = check_out_file(a.out, a.force)
    if a.from_prompts and (a.source or a.target):
        raise LineasError("give either --from-prompts or --source and --target, not both")
    if not a.from_prompts and not (a.source and a.target):
        raise LineasError("train needs --source and --target files (or --from-prompts FILE)")
    from .recipes import get_recipe

    rec = get_recipe(a.recipe)
    cfg = TrainConfig(steps=rec.steps if a.steps is None else a.steps, lr=rec.lr if a.lr is None else a.lr,
                      optimizer=a.optimizer or rec.optimizer,
                      batch_size=rec.batch_size if a.batch_size is None else a.batch_size,
                      gamma=a.sparsity, seed=a.seed, patience=a.patience, maps=a.maps)
    if a.source:
        source = read_texts(a.source, a.source_field, a.source_where, what="--source")
        target = read_texts(a.target, a.target_field, a.target_where, what="--target")
        require_samples(source, "--source")
        require_samples(target, "--target")
        prompts = []
    else:
        prompts = read_texts(a.from_prompts, what="--from-prompts")
    if a.max_strength != 1.0 and not a.calibrate_on:
        raise LineasError(f"--max-strength {a.max_strength:g} only applies to --calibrate-on FILE: add the neutral "
                          f"texts to calibrate on, or drop --max-strength")
    if a.preserve_weight is not None and not a.preserve:
        raise LineasError(f"--preserve-weight {a.preserve_weight:g} only applies to --preserve FILE: add the neutral "
                          f"texts to keep fluent, or drop --preserve-weight")
    preserve = read_texts(a.preserve, what="--preserve") if a.preserve else None
    if preserve is not None:
        require_samples(preserve, "--preserve")
        if a.method != "lineas":
            raise LineasError(f"--preserve needs --method lineas (the {a.method} method is fitted in closed form)")
    calib = read_texts(a.calibrate_on, what="--calibrate-on") if a.calibrate_on else None
    if calib is not None and preserve is not None:
        from .data import check_disjoint, hash_texts

        check_disjoint(calib, hash_texts(preserve), what="--calibrate-on texts", used_for="--preserve",
                       fix="calibrate on other neutral texts than the ones training keeps fluent")
    if calib is not None:
        from .calibrate import check_budget

        require_samples(calib, "--calibrate-on", 1)
        check_budget(a.max_ppl_increase)  # before the model loads
    lm = _load(a)
    _set_chat(lm, a)
    if calib is not None:
        check_scorable(lm, calib, "--calibrate-on")  # before training, not after
    if preserve is not None:
        check_scorable(lm, preserve, "--preserve")
    if prompts:
        from .build import build_sets
        from .judges import make_judge

        source, target = build_sets(lm, prompts, a.n, make_judge(a.judge), _gen_config(a), seed=a.seed)
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
        from .calibrate import calibrate_record

        cal = calibrate_record(lm, record, calib, max_increase=a.max_ppl_increase, check=a.check_signals,
                              max_strength=a.max_strength)
        cal_note = (f"; calibrated to strength {cal.strength:.3f} (perplexity {cal.base_perplexity:.2f} -> "
                    f"{cal.perplexity:.2f} on {cal.num_texts} --calibrate-on texts)")
    a.check_signals()
    save_or_rescue(lambda p: save_record(p, record, overwrite=a.force), out)
    loss = f", loss {r.losses[0]:.4g} -> {r.losses[-1]:.4g} in {r.steps} steps" if r.steps else ""
    sys.stdout.write(f"wrote {out} ({record.method}, {len(record.steering.sites)} sites, {r.seconds:.1f} s{loss}, "
                     f"whole-set OT loss {r.eval_before:.4g} -> {r.eval_after:.4g}, "
                     f"support {record.steering.support():.1%}{cal_note})\n")
    return 0


def cmd_generate(a) -> int:
    import json

    from .data import read_texts
    from .generate import generate
    from .validate import check_out_file, save_or_rescue

    prompts = [a.prompt] if a.prompt is not None else read_texts(a.prompts, a.field, what="--prompts")
    out = check_out_file(a.out, a.force) if a.out else None
    lm = _load(a)
    steering, meta = _load_steering(lm, a.steering, a.allow_transfer) if a.steering else (None, None)
    _set_chat(lm, a, meta)
    g = generate(lm, prompts, _gen_config(a), seed=a.seed, steering=steering, strength=a.strength,
                 check=a.check_signals)
    lines = [json.dumps({"prompt": p, "continuation": c}) for p, c in zip(g.prompts, g.continuations)]
    a.check_signals()
    if out is not None:
        from lineas_engine import atomic_write_bytes

        data = ("\n".join(lines) + "\n").encode()
        save_or_rescue(lambda p: atomic_write_bytes(p, data, overwrite=a.force), out, "the generations")
    elif a.prompt is not None:
        sys.stdout.write(g.continuations[0] + "\n")
    else:
        sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes (what `sha256sum` prints): ties a report to the exact steering file, whatever its
    path or name when it was evaluated."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cmd_eval(a) -> int:
    from .data import check_disjoint, read_texts, require_samples
    from .evaluate import evaluate_strengths
    from .judges import make_judge
    from .report import write_report
    from .validate import check_report_dir, check_scorable, hashes_of

    prompts = read_texts(a.prompts, a.field, what="--prompts")
    neutral = read_texts(a.neutral, what="--neutral")
    if a.max_prompts:
        prompts = prompts[: a.max_prompts]
    if a.max_neutral:
        neutral = neutral[: a.max_neutral]
    require_samples(neutral, "--neutral", 1)
    check_report_dir(a.report, a.force)  # before any generation
    judge = make_judge(a.judge)
    lm = _load(a)
    check_scorable(lm, neutral, "--neutral")
    steering, meta = _load_steering(lm, a.steering, a.allow_transfer) if a.steering else (None, None)
    _set_chat(lm, a, meta)
    if meta is not None:
        check_disjoint(prompts, hashes_of(meta, "training_text_hashes", a.steering))
        check_disjoint(neutral, hashes_of(meta, "calibration_text_hashes", a.steering), what="--neutral texts",
                       used_for="calibrate this steering's strength", fix="measure perplexity on other texts")
        check_disjoint(neutral, hashes_of(meta, "preserve_text_hashes", a.steering), what="--neutral texts",
                       used_for="keep this steering fluent in training (--preserve)",
                       fix="measure perplexity on other texts")
    rows = evaluate_strengths(lm, steering, prompts, neutral, strengths=a.strengths, seeds=a.seeds, judge=judge,
                              gen=_gen_config(a), label=a.label or (Path(a.steering).stem if a.steering else "none"),
                              check=a.check_signals)
    a.check_signals()
    paths = write_report(a.report, rows, {"model": a.model, "steering": a.steering,
                                          "steering_sha256": _file_sha256(a.steering) if a.steering else None,
                                          "judge": judge.name,
                                          "prompts": f"{a.prompts} ({len(prompts)})",
                                          "neutral": f"{a.neutral} ({len(neutral)})", "seeds": a.seeds,
                                          "chat": lm.chat.to_dict() if lm.chat is not None else {"enabled": False}})
    from .report import markdown_table

    sys.stdout.write(markdown_table(rows))
    sys.stdout.write(f"report: {paths['md']}\n")
    return 0


def cmd_calibrate(a) -> int:
    from lineas_engine import load_record

    from .calibrate import calibrate_record
    from .data import check_disjoint, read_texts, require_samples
    from .validate import check_out_file, check_scorable, hashes_of, save_or_rescue

    out = check_out_file(a.out, a.force)
    if out.resolve() == Path(a.steering).expanduser().resolve():
        raise LineasError(f"--out {a.out!r} is the --steering file; write the calibrated map to a new file")
    texts = read_texts(a.calibrate_on, what="--calibrate-on")
    require_samples(texts, "--calibrate-on", 1)
    lm = _load(a)
    check_scorable(lm, texts, "--calibrate-on")
    record = load_record(a.steering, model=lm.model, architecture=lm.architecture, allow_transfer=a.allow_transfer)
    _check_map(record.steering, a.steering)
    hashes_of(record, "calibration_text_hashes", a.steering)  # intact before they are merged with the new ones
    check_disjoint(texts, hashes_of(record, "preserve_text_hashes", a.steering), what="--calibrate-on texts",
                   used_for="keep this steering fluent in training (--preserve)",
                   fix="calibrate on other neutral texts")
    before = record.training.pop("calibration", None)
    if before is not None:  # the file holds T_s of the trained map: take it back to the trained map
        s0 = before.get("strength") if isinstance(before, dict) else None
        if not (isinstance(s0, (int, float)) and math.isfinite(s0) and s0 > 0):
            raise LineasError(f"steering {a.steering!r} was calibrated to strength {s0!r}: its trained map cannot be "
                              "recovered from it; calibrate the uncalibrated file, or retrain")
        record.steering = record.steering.at_strength(1.0 / s0)
        record.training["calibrations_before"] = [*record.training.get("calibrations_before", []), before]
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


def cmd_export(a) -> int:
    from .export import export_folded
    from .validate import check_export_dir

    check_export_dir(a.out)
    lm = _load(a)
    steering, _ = _load_steering(lm, a.steering, a.allow_transfer)
    a.check_signals()
    info = export_folded(lm, steering, a.out, strength=a.strength, scale_only=a.scale_only)
    sys.stdout.write(f"exported to {a.out} (max |logit diff| vs hooked: {info['max_abs_logit_diff_vs_hooked']:.2e})\n")
    return 0


def cmd_demo(a) -> int:
    from .demo import run_demo
    from .validate import check_out_file

    if a.out:
        check_out_file(a.out)  # before the minutes of the demo, never over an existing file
    run_demo(model=a.model, n=a.n, steps=a.steps, eval_prompts=a.eval_prompts, neutral=a.neutral, out=a.out,
             seed=a.seed, stream=sys.stdout, calibrate=a.calibrate, max_ppl_increase=a.max_ppl_increase,
             check=a.check_signals)
    return 0


COMMANDS = {"train": cmd_train, "calibrate": cmd_calibrate, "generate": cmd_generate, "eval": cmd_eval,
            "export": cmd_export, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if not args.verbose:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # our own bars show progress; keep stderr to one line on errors
        except ImportError:
            pass
    from .validate import check_args

    signals = _Signals()
    args.check_signals = signals.check
    signals.install()
    try:
        check_args(args)
        return COMMANDS[args.command](args)
    except LineasError as e:
        if os.environ.get("LINEAS_DEBUG"):
            raise
        sys.stderr.write(f"lineas-llm {args.command}: error: {_one_line(e)}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"lineas-llm {args.command}: interrupted; {_what_was_kept(args.command)}\n")
        return 130
    except _Terminated:
        sys.stderr.write(f"lineas-llm {args.command}: terminated; {_what_was_kept(args.command)}\n")
        return 143
    except (OSError, MemoryError) as e:  # I/O (disk full, permissions, a vanished file) and memory
        if os.environ.get("LINEAS_DEBUG"):
            raise
        what = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.strerror and e.filename else e
        sys.stderr.write(f"lineas-llm {args.command}: error: {type(e).__name__}: {_one_line(what)}\n")
        return 1
    except Exception as e:  # a bug or an unforeseen input: still one line; LINEAS_DEBUG=1 shows the traceback
        if os.environ.get("LINEAS_DEBUG"):
            raise
        sys.stderr.write(f"lineas-llm {args.command}: internal error: {type(e).__name__}: {_one_line(e)} "
                         "(rerun with LINEAS_DEBUG=1 for the traceback and please report it)\n")
        return 2
    finally:
        signals.restore()


def _what_was_kept(command: str) -> str:
    """What a stopped command leaves: nothing, except the demo's files written before the stop (each complete)."""
    if command == "demo":
        return "the demo's files written before the stop (each one complete) stay in its folder"
    return "no output file was written"


class _Terminated(BaseException):
    """SIGTERM, turned into an exception so that every ``finally`` (temporary files) runs."""


class _Signals:
    """SIGTERM and SIGINT raise ``_Terminated`` / ``KeyboardInterrupt`` in the main thread, so every ``finally``
    (temporary files) runs. A library can swallow that exception (a bare ``except:`` while a model loads, a
    ``__del__``), so the signal is also remembered: :meth:`check` (``args.check_signals``) raises it again after the
    model loads, at every training step, before each batch of generation, perplexity and calibration, and before a
    command writes its output: a stopped command stops within a batch and never writes its output."""

    def __init__(self):
        self.seen: int | None = None
        self.old: dict[int, object] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (e.g. called from a test runner's worker)
                return

    def restore(self) -> None:
        for sig, old in self.old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)

    def _handler(self, signum, frame) -> None:
        self.seen = signum
        self.check()

    def check(self) -> None:
        if self.seen == signal.SIGTERM:
            raise _Terminated()
        if self.seen == signal.SIGINT:
            raise KeyboardInterrupt()


def _one_line(e) -> str:
    return " ".join(str(e).split())[:2000]


if __name__ == "__main__":
    raise SystemExit(main())
