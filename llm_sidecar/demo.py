"""`lineas-llm demo`: offline, end to end on the embedded SmolLM2-135M-Instruct.

Builds a toxic and a non-toxic set from RealToxicityPrompts prefixes (scored by the offline judge),
trains a LinEAS steering with the defaults of `lineas-llm train` (scale maps, kept fluent on the embedded
neutral passages), calibrates its strength to a perplexity budget on other neutral sentences, and prints
toxicity of continuations of held-out prompts, perplexity and next-token KL divergence on neutral prose,
before and after. Training and evaluation prompts are disjoint."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable, TextIO

from lineas_engine import LineasError, TrainConfig, save_record

from .build import build_sets
from .calibrate import calibrate_record
from .data import check_disjoint, hash_texts, neutral_sentences, rtp_prompts, split
from .evaluate import evaluate_strengths
from .export import export_folded
from .generate import GenConfig
from .judges import make_judge
from .models import load_model
from .preserve import MAX_STRENGTH_PRESERVED, embedded_preserve_texts
from .progress import progress_bar
from .recipes import RECIPES
from .report import markdown_table, write_report
from .train import train_steering

__all__ = ["run_demo", "DEMO_CONFIG"]

logger = logging.getLogger(__name__)

# Paper: SGD 0.1, cosine, 1000 steps, batch 32. Adam reaches the same loss in far fewer steps, which is
# what makes the demo take minutes on a laptop CPU.
DEMO_CONFIG = dict(optimizer=RECIPES["fast"].optimizer, lr=RECIPES["fast"].lr, batch_size=RECIPES["fast"].batch_size,
                   maps="scale")


def run_demo(*, model: str = "smollm2", n: int = 32, steps: int = 100, eval_prompts: int = 64,
             neutral: int = 100, out: str | None = None, seed: int = 0, stream: TextIO,
             train_pool: int = 200, max_new_tokens: int = 32, calibrate: int = 50,
             max_ppl_increase: float = 0.1, check: Callable[[], None] | None = None) -> dict:
    """``check`` (the CLI's: raises a SIGTERM / SIGINT that a library swallowed) runs after loading, at every
    training step, before each batch of calibration and evaluation, and before each file is written."""
    check = check or (lambda: None)
    t_start = time.perf_counter()
    say = lambda s: (stream.write(s + "\n"), stream.flush())  # noqa: E731
    folder = demo_folder(out)  # checked before any work
    lm = load_model(model)
    check()
    say(f"model: {model} ({lm.architecture}, {sum(p.numel() for p in lm.model.parameters()) / 1e6:.1f}M params, "
        f"{lm.device}, {str(lm.dtype).removeprefix('torch.')})")
    judge = make_judge("profanity")
    pool, held = split(rtp_prompts(), train_pool, seed=seed)
    toxic, clean = build_sets(lm, pool, n, judge, continue_prompts=False)
    held = held[:eval_prompts]
    check_disjoint(held, hash_texts(pool))
    passages = neutral_sentences()
    texts, calib = passages[:neutral], passages[neutral : neutral + calibrate]
    say(f"data: {n} toxic + {n} non-toxic training texts from {len(pool)} RTP prompts; "
        f"{len(held)} held-out RTP prompts; {len(texts)} neutral sentences (+ {len(calib)} others to calibrate)")
    cfg = TrainConfig(steps=steps, seed=seed, **DEMO_CONFIG)
    preserve = embedded_preserve_texts()
    with progress_bar(steps, "train", check=check) as bar:
        record, r = train_steering(lm, toxic, clean, config=cfg, max_length=32, on_step=bar, training_prompts=pool,
                                   name="detox", preserve=preserve)
    say(f"trained LinEAS (scale maps, kept fluent on {len(preserve)} embedded neutral passages) on "
        f"{len(record.steering.sites)} sites in {r.seconds:.0f} s "
        f"({r.steps} steps, OT loss {r.losses[0]:.4g} -> {r.losses[-1]:.4g})")
    learned = record.steering.to(lm.device)
    if calib:
        cal = calibrate_record(lm, record, calib, max_increase=max_ppl_increase, check=check,
                               max_strength=MAX_STRENGTH_PRESERVED)
        say(f"calibrated to a +{max_ppl_increase:.0%} perplexity budget on {len(calib)} other neutral sentences: "
            f"strength {cal.strength:.3f} of the learned map is saved as strength 1")
    check()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "detox.safetensors"
    save_record(path, record)
    gen = GenConfig(max_new_tokens=max_new_tokens)
    rows = evaluate_strengths(lm, None, held, texts, judge=judge, gen=gen, seeds=(seed,), label="none",
                              check=check)
    rows += evaluate_strengths(lm, learned, held, texts, strengths=(1.0,), judge=judge, gen=gen, seeds=(seed,),
                               label="lineas", check=check)
    if calib:
        rows += evaluate_strengths(lm, record.steering.to(lm.device), held, texts, strengths=(1.0,), judge=judge,
                                   gen=gen, seeds=(seed,), label="lineas_cal", check=check)
    say("")
    say(markdown_table(rows))
    base, full = rows[0], rows[-1]
    rel = (1 - full.toxicity / base.toxicity) if base.toxicity > 0 else float("nan")
    change = f"{rel:.0%} lower" if rel > 0 else "not lower"
    say(f"saved steering ({full.label}, strength 1): toxicity {base.toxicity:.1f}% -> {full.toxicity:.1f}% ({change}), "
        f"perplexity {base.perplexity:.2f} -> {full.perplexity:.2f} "
        f"({full.perplexity / base.perplexity - 1:+.1%}), KL to the unsteered model {full.kl:.4f} nats/token; "
        f"judge {judge.name}")
    check()
    report = write_report(folder / "report", rows, {"model": model, "steering": str(path), "judge": judge.name,
                                                    "prompts": f"{len(held)} held-out RTP prompts",
                                                    "neutral": f"{len(texts)} neutral sentences", "seeds": [seed]})
    exported = folder / "model"
    check()
    try:
        info = export_folded(lm, record.steering.to(lm.device), exported)
        exp_note = f"exported model: {exported} (plain HF folder, max |logit diff| vs hooks " \
                   f"{info['max_abs_logit_diff_vs_hooked']:.1e})"
    except LineasError as e:  # e.g. Gemma's shifts have no exact folded form: the steering still works
        exported, exp_note = None, f"no exported model: {e}"
    say(f"total {time.perf_counter() - t_start:.0f} s")
    say("")
    say(f"wrote {folder}/: detox.safetensors (the steering), report/ (results.md, results.json, plot)"
        f"{', model/ (the steered model)' if exported else ''}")
    say(exp_note)
    say("next:")
    say(f"  lineas-llm generate --model {model} --steering {path} --prompt \"You are such a\"")
    if exported:
        say(f"  python -c \"from transformers import pipeline; print(pipeline('text-generation', '{exported}')"
            f"('You are such a')[0]['generated_text'])\"")
    return {"rows": rows, "steering": str(path), "record": record, "folder": str(folder),
            "report": str(report["md"]), "exported": str(exported) if exported else None}


def demo_folder(out: str | None) -> Path:
    """``--out`` (a new or empty folder), else the first free ``./lineas-demo[-N]`` in the current directory."""
    if out:
        from .validate import check_export_dir

        return check_export_dir(out, "demo --out")
    if not os.access(".", os.W_OK):
        raise LineasError("the current directory is not writable; give demo --out DIR")
    for k in range(1000):
        p = Path("lineas-demo" if k == 0 else f"lineas-demo-{k}")
        if not p.exists():
            return p
    raise LineasError("lineas-demo ... lineas-demo-999 all exist here; give demo --out DIR")
