"""`lineas-llm generate`: continue prompts, optionally under a steering."""

from __future__ import annotations

import json
import sys

from ..options import TRANSFER_HELP, chat_args, gen_args, gen_config, load, load_steering_for, model_args, set_chat

HELP = "continue prompts, optionally under a steering"


def add_parser(sub) -> None:
    g = sub.add_parser("generate", help=HELP)
    model_args(g)
    chat_args(g)
    g.add_argument("--steering")
    g.add_argument("--strength", type=float, default=1.0)
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt")
    src.add_argument("--prompts", help="file of prompts (.txt a line each, .jsonl, .csv)")
    g.add_argument("--field", help="JSONL field / CSV column of --prompts")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", help="write JSONL here instead of stdout")
    g.add_argument("--force", action="store_true", help="replace --out if it exists")
    g.add_argument("--allow-transfer", action="store_true", help=TRANSFER_HELP)
    gen_args(g)


def run(a) -> int:
    from ..data import read_texts
    from ..generate import generate
    from ..validate import check_out_file, save_or_rescue

    prompts = [a.prompt] if a.prompt is not None else read_texts(a.prompts, a.field, what="--prompts")
    out = check_out_file(a.out, a.force) if a.out else None
    lm = load(a)
    steering, meta = load_steering_for(lm, a.steering, a.allow_transfer) if a.steering else (None, None)
    set_chat(lm, a, meta)
    g = generate(lm, prompts, gen_config(a), seed=a.seed, steering=steering, strength=a.strength,
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
