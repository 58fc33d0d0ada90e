"""`lineas-llm eval`: toxicity of continuations, perplexity and next-token KL on neutral text, over strengths."""

from __future__ import annotations

import sys
from pathlib import Path

from ..judges import JUDGE_HELP
from ..options import (
    TRANSFER_HELP,
    chat_args,
    file_sha256,
    floats,
    gen_args,
    gen_config,
    ints,
    load,
    load_steering_for,
    model_args,
    set_chat,
)

HELP = "toxicity of continuations, perplexity and KL divergence on neutral text, over strengths"


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help=HELP)
    model_args(e)
    chat_args(e)
    e.add_argument("--steering")
    e.add_argument("--prompts", required=True, help="held-out prompts (never the training prompts)")
    e.add_argument("--neutral", required=True,
                   help="neutral texts for perplexity and for the KL divergence of the steered model's next-token "
                        "distribution from the unsteered one's (nats per token)")
    e.add_argument("--field", help="JSONL field / CSV column of --prompts")
    e.add_argument("--strengths", type=floats, default=[0.0, 0.5, 1.0])
    e.add_argument("--seeds", type=ints, default=[0, 1])
    e.add_argument("--max-prompts", type=int, default=0, help="use the first N prompts (0 = all)")
    e.add_argument("--max-neutral", type=int, default=0, help="use the first N neutral sentences (0 = all)")
    e.add_argument("--judge", default="profanity", help=JUDGE_HELP)
    e.add_argument("--report", required=True, help="folder for results.json / results.md / the PNG plot")
    e.add_argument("--label", default=None, help="name of this steering in the report")
    e.add_argument("--force", action="store_true", help="replace the result files of an existing --report")
    e.add_argument("--allow-transfer", action="store_true", help=TRANSFER_HELP)
    gen_args(e)


def run(a) -> int:
    from ..data import read_texts, require_samples
    from ..evaluate import evaluate_strengths
    from ..judges import make_judge
    from ..report import markdown_table, write_report
    from ..validate import check_report_dir, check_scorable, refuse_used_texts

    prompts = read_texts(a.prompts, a.field, what="--prompts")
    neutral = read_texts(a.neutral, what="--neutral")
    if a.max_prompts:
        prompts = prompts[: a.max_prompts]
    if a.max_neutral:
        neutral = neutral[: a.max_neutral]
    require_samples(neutral, "--neutral", 1)
    check_report_dir(a.report, a.force)  # before any generation
    judge = make_judge(a.judge)
    lm = load(a)
    check_scorable(lm, neutral, "--neutral")
    steering, meta = load_steering_for(lm, a.steering, a.allow_transfer) if a.steering else (None, None)
    set_chat(lm, a, meta)
    if meta is not None:
        refuse_used_texts(prompts, neutral, meta, a.steering)
    rows = evaluate_strengths(lm, steering, prompts, neutral, strengths=a.strengths, seeds=a.seeds, judge=judge,
                              gen=gen_config(a), label=a.label or (Path(a.steering).stem if a.steering else "none"),
                              check=a.check_signals)
    a.check_signals()
    paths = write_report(a.report, rows, {"model": a.model, "steering": a.steering,
                                          "steering_sha256": file_sha256(a.steering) if a.steering else None,
                                          "judge": judge.name,
                                          "prompts": f"{a.prompts} ({len(prompts)})",
                                          "neutral": f"{a.neutral} ({len(neutral)})", "seeds": a.seeds,
                                          "chat": lm.chat.to_dict() if lm.chat is not None else {"enabled": False}})
    sys.stdout.write(markdown_table(rows))
    sys.stdout.write(f"report: {paths['md']}\n")
    return 0
