"""`lineas-llm demo`: the offline end-to-end demo on the embedded SmolLM2-135M-Instruct."""

from __future__ import annotations

import argparse
import sys

HELP = "offline end-to-end demo on the embedded SmolLM2-135M-Instruct"


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help=HELP)
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


def run(a) -> int:
    from ..demo import run_demo
    from ..validate import check_out_file

    if a.out:
        check_out_file(a.out)  # before the minutes of the demo, never over an existing file
    run_demo(model=a.model, n=a.n, steps=a.steps, eval_prompts=a.eval_prompts, neutral=a.neutral, out=a.out,
             seed=a.seed, stream=sys.stdout, calibrate=a.calibrate, max_ppl_increase=a.max_ppl_increase,
             check=a.check_signals)
    return 0
