"""Write the protocol's splits as text files (one text a line), for the CLI commands of docs/results:

    python -m bench.llm.dump_data --model smollm2 --out /tmp/llmdata

toxic.txt / clean.txt (the 32, or --n, most / least toxic of the 200 pool prompts), statements.txt (32 short neutral
statements of another domain), heldout.txt (300 evaluation prompts), neutral.txt (500 evaluation passages),
val_neutral.txt (the 100 validation passages after them, for --calibrate-on), calib.txt (the next 100),
novels.txt (--n passages of novels after those 700, each cut to its first 13 words, about the toxic prompts'
mean length: a neutral target of another domain than the prompts), novels_windows.txt (the same passages cut into
consecutive 13-word windows, the first three complete ones of each: 174 texts for --n 64), novels_full.txt
(the same passages uncut, about 41 words)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .protocol import prepare_data, short_statements

NOVEL_WORDS = 13  # the 64 most toxic pool prompts average 12.5 words


def word_windows(text: str, words: int, limit: int = 3) -> list[str]:
    """The first ``limit`` consecutive ``words``-word windows of ``text`` (a shorter tail is dropped)."""
    w = text.split()
    return [" ".join(w[i:i + words]) for i in range(0, len(w) - words + 1, words)][:limit]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.llm.dump_data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n", type=int, default=32, help="training texts per side (the N most / least toxic of the pool)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    from llm_sidecar.data import neutral_sentences, split
    from llm_sidecar.judges import make_judge
    from llm_sidecar.models import load_model

    lm = load_model(a.model)
    d = prepare_data(lm, make_judge("profanity"), n=a.n)
    novels = neutral_sentences()[700:700 + a.n]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"toxic": d.toxic, "clean": d.clean, "statements": split(short_statements(), 32, seed=0)[0],
             "heldout": d.held, "neutral": d.neutral, "val_neutral": d.val_neutral[:100],
             "calib": d.val_neutral[100:200], "val_prompts": d.val_prompts,
             "novels": [" ".join(t.split()[:NOVEL_WORDS]) for t in novels],
             "novels_windows": [w for t in novels for w in word_windows(t, NOVEL_WORDS)], "novels_full": novels}
    for name, texts in files.items():
        (out / f"{name}.txt").write_text("".join(t.replace("\n", " ") + "\n" for t in texts), encoding="utf-8")
        print(f"{out / name}.txt: {len(texts)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
