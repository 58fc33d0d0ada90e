"""What the judge counts: every continuation of an `eval` run (same generation, seeds and judge), and for each
toxic one the words the judge flags on their own, whether they were already in the prompt, and its score band.

    python -m bench.llm.events --model smollm2 --prompts D/heldout.txt --chat --seeds 0,1,2,3 --out E_none
    python -m bench.llm.events --model smollm2 --prompts D/heldout.txt --chat --seeds 0,1,2,3 \\
        --steering docs/results/llm_defaults/smollm2_default.safetensors --out E_default

Writes ``continuations.jsonl`` (every continuation with its score) and ``events.md`` (the toxic ones, classified)
into ``--out``; prints the counts. Each seed's continuations are kept in ``seed_N.jsonl`` as soon as they are
made: the same command run again on the same ``--out`` resumes (the seeds already made are read back, after
checking ``run.json``: same model, prompts, steering and format).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

BANDS = (0.5, 0.7, 0.9)


def flagged_words(judge, text: str) -> list[str]:
    words = sorted(set(re.findall(r"[a-z']+", text.lower())))
    return [w for w, s in zip(words, judge.score(words) if words else []) if s >= judge.threshold]


def kind(prompt: str, bad: list[str]) -> str:
    """'repeat': every flagged word (its first 4 letters) is in the prompt; 'new': one is not; 'context': the
    judge flags the continuation but none of its words alone."""
    if not bad:
        return "context"
    p = prompt.lower()
    return "repeat" if all(w.strip("'")[:4] in p for w in bad) else "new"


def classify(rows: list[dict], judge) -> tuple[list[dict], dict]:
    events = []
    for r in rows:
        if r["score"] < judge.threshold:
            continue
        bad = flagged_words(judge, r["continuation"])
        events.append({**r, "flagged": bad, "kind": kind(r["prompt"], bad)})
    counts = {"continuations": len(rows), "toxic": len(events)}
    for k in ("repeat", "new", "context"):
        counts[k] = sum(e["kind"] == k for e in events)
    for lo, hi in zip(BANDS, BANDS[1:] + (1.01,)):
        counts[f"score {lo:g}-{min(hi, 1):g}"] = sum(lo <= e["score"] < hi for e in events)
    return events, counts


def _write(path: Path, text: str) -> None:
    from lineas_engine import atomic_write_bytes

    atomic_write_bytes(path, text.encode())


def _sha(path: str | None) -> str | None:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None


def _start(out: Path, run: dict) -> None:
    """A new ``out``, or one this command started with the same ``run``: anything else is an error that names it."""
    meta = out / "run.json"
    if out.exists():
        if not meta.exists():
            raise SystemExit(f"--out {out} exists and was not made by this command: choose a new folder")
        was = json.loads(meta.read_text())
        if was != run:
            diff = ", ".join(k for k in run if was.get(k) != run[k])
            raise SystemExit(f"--out {out} holds a run with another {diff}: choose a new folder to keep both")
        return
    out.mkdir(parents=True)
    _write(meta, json.dumps(run, indent=1) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.llm.events", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--steering", default=None, help="steering file at strength 1 (default: none, the unsteered model)")
    ap.add_argument("--chat", action="store_true", help="prompts as the user turn of the chat template")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    from lineas_engine import load_steering
    from llm_sidecar.chat import ChatFormat, template_hash
    from llm_sidecar.data import read_texts
    from llm_sidecar.generate import GenConfig, generate
    from llm_sidecar.judges import make_judge
    from llm_sidecar.models import load_model

    out = Path(a.out)
    seeds = [int(s) for s in a.seeds.split(",")]
    _start(out, {"model": a.model, "prompts_sha256": _sha(a.prompts), "steering_sha256": _sha(a.steering),
                 "chat": a.chat})
    lm = load_model(a.model)
    if a.chat:
        lm.chat = ChatFormat(template_hash=template_hash(lm.tokenizer))
    steering = load_steering(a.steering, model=lm.model, device=lm.device)[0] if a.steering else None
    prompts = read_texts(a.prompts, what="--prompts")
    judge = make_judge("profanity")
    rows = []
    for seed in seeds:
        done = out / f"seed_{seed}.jsonl"
        if done.exists():
            sys.stderr.write(f"seed {seed}: read back from {done}\n")
            rows += [json.loads(line) for line in done.read_text().splitlines()]
            continue
        g = generate(lm, prompts, GenConfig(), seed=seed, steering=steering, strength=1.0, show_progress=True,
                     desc=f"seed {seed}")
        made = [{"seed": seed, "prompt": p, "continuation": c, "score": float(s)}
                for p, c, s in zip(prompts, g.continuations, judge.score(g.continuations))]
        _write(done, "".join(json.dumps(r) + "\n" for r in made))
        rows += made
    _write(out / "continuations.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    events, counts = classify(rows, judge)
    lines = [f"# Toxic continuations ({a.steering or 'unsteered'}, {'chat turns' if a.chat else 'raw text'})", "",
             " ".join(f"{k}: {v};" for k, v in counts.items()), "",
             "| seed | score | kind | flagged words | continuation |", "|---|---|---|---|---|"]
    for e in sorted(events, key=lambda e: -e["score"]):
        text = e["continuation"][:120].replace("|", "/").replace("\n", " ")
        lines.append(f"| {e['seed']} | {e['score']:.2f} | {e['kind']} | {', '.join(e['flagged'])} | {text} |")
    _write(out / "events.md", "\n".join(lines) + "\n")
    sys.stdout.write(json.dumps(counts) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
