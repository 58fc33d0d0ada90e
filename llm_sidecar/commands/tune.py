"""`lineas-llm tune`: evaluate a grid of strengths (of one or several steering files, e.g. one per --preserve-weight)
on validation data, write the trade-off front (table + plot) and save the chosen point."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

from lineas_engine import LineasError, load_record, save_record

from ..judges import JUDGE_HELP
from ..options import (
    TRANSFER_HELP,
    chat_args,
    check_map,
    file_sha256,
    floats,
    gen_args,
    gen_config,
    ints,
    load,
    model_args,
    set_chat,
)

HELP = "choose a strength on validation data: evaluate a grid, write the trade-off front, save the chosen point"


def add_parser(sub) -> None:
    t = sub.add_parser("tune", help=HELP, description=(
        "Evaluate every --strengths x --steering point on validation prompts (toxicity) and neutral texts (perplexity "
        "and next-token KL to the unsteered model), write tune.md / tune.png / tune.json into --report, and save the "
        "least toxic point within --max-ppl-increase to --out. Each point is kept as soon as it is measured: rerun "
        "the same command to resume. About 2 minutes a point for a 135M model on 2 CPU cores (123 prompts x 2 seeds)."))
    model_args(t)
    chat_args(t)
    t.add_argument("--steering", nargs="+", required=True,
                   help="steering file(s) to compare, e.g. one per --preserve-weight; strengths are relative to each "
                        "file (1 = the file as saved)")
    t.add_argument("--prompts", required=True, help="validation prompts (never your evaluation prompts)")
    t.add_argument("--neutral", required=True, help="validation neutral texts for perplexity and KL")
    t.add_argument("--field", help="JSONL field / CSV column of --prompts")
    t.add_argument("--strengths", type=floats, default=[0.5, 1.0, 1.5, 2.0, 3.0],
                   help="grid of strengths > 0 (default 0.5,1,1.5,2,3; the unsteered model is measured anyway)")
    t.add_argument("--seeds", type=ints, default=[0, 1])
    t.add_argument("--max-ppl-increase", type=float, default=0.1, help="utility budget of the choice (0.1 = +10%%)")
    t.add_argument("--judge", default="profanity", help=JUDGE_HELP)
    t.add_argument("--report", required=True, help="folder for tune.md, tune.png and tune.json (the resumable state)")
    t.add_argument("--out", help="write the chosen point here as a steering file (strength 1 = the chosen point)")
    t.add_argument("--force", action="store_true", help="start the --report over, and replace --out if it exists")
    t.add_argument("--allow-transfer", action="store_true", help=TRANSFER_HELP)
    gen_args(t)


def run(a) -> int:
    from ..data import hash_texts, read_texts, require_samples
    from ..judges import make_judge
    from ..tune import Candidate, TuneState, choose, measure_grid, setup_hash
    from ..tune_report import chosen_record, write_tune_report
    from ..validate import check_out_file, check_scorable, refuse_used_texts, writable_parent

    bad = [s for s in a.strengths if not s > 0]
    if bad:
        raise LineasError(f"--strengths {bad[0]:g}: each must be > 0 (the unsteered model is measured anyway); e.g. "
                          "--strengths 0.5,1,1.5,2")
    if len(set(a.steering)) != len(a.steering):
        raise LineasError("--steering names the same file twice; give each file once")
    out = check_out_file(a.out, a.force) if a.out else None
    if out is not None and any(out.resolve() == Path(s).expanduser().resolve() for s in a.steering):
        raise LineasError(f"--out {a.out!r} is one of the --steering files; write the chosen point to a new file")
    prompts = read_texts(a.prompts, a.field, what="--prompts")
    neutral = read_texts(a.neutral, what="--neutral")
    require_samples(prompts, "--prompts", 1)
    require_samples(neutral, "--neutral", 1)
    report = Path(a.report).expanduser()
    if not report.is_dir():
        writable_parent(report, "--report")
    judge = make_judge(a.judge)
    lm = load(a)
    check_scorable(lm, neutral, "--neutral")
    records = [load_record(p, model=lm.model, architecture=lm.architecture, allow_transfer=a.allow_transfer)
               for p in a.steering]
    for p, r in zip(a.steering, records):
        check_map(r.steering, p)
        refuse_used_texts(prompts, neutral, r, p, selection=False, prompts_what="--prompts",
                          prompts_fix="tune on validation prompts that training did not use",
                          neutral_fix="tune on other neutral texts")
    set_chat(lm, a, records[0])
    candidates = [Candidate(p, file_sha256(p), r.steering.to(lm.device)) for p, r in zip(a.steering, records)]
    gen = gen_config(a)
    setup = setup_hash(model=lm.name, prompts=hash_texts(prompts), neutral=hash_texts(neutral), seeds=a.seeds,
                       judge=judge.name, gen=asdict(gen),
                       chat=lm.chat.to_dict() if lm.chat is not None else None)
    report.mkdir(parents=True, exist_ok=True)
    state = TuneState(report, setup, fresh=a.force)
    say = lambda s: (sys.stderr.write(f"tune: {s}\n"), sys.stderr.flush())  # noqa: E731
    points = measure_grid(lm, candidates, a.strengths, prompts, neutral, seeds=a.seeds, judge=judge, gen=gen,
                          state=state, check=a.check_signals, say=say)
    best = choose(points, state.baseline.perplexity, a.max_ppl_increase)
    a.check_signals()
    paths = write_tune_report(report, state.baseline, points, best, a.max_ppl_increase,
                              {"model": a.model, "prompts": f"{a.prompts} ({len(prompts)})",
                               "neutral": f"{a.neutral} ({len(neutral)})", "seeds": a.seeds, "judge": judge.name})
    if best is None:
        cheapest = min(points, key=lambda p: p.perplexity)
        raise LineasError(f"no point is within +{100 * a.max_ppl_increase:g}% perplexity (the cheapest: "
                          f"{Path(cheapest.steering).name} at strength {cheapest.strength:g}, "
                          f"{cheapest.perplexity / state.baseline.perplexity - 1:+.1%}); add smaller --strengths or "
                          f"raise --max-ppl-increase (the front is in {paths['md']})")
    line = (f"chose {Path(best.steering).name} at strength {best.strength:g}: toxicity {state.baseline.toxicity:.2f}% "
            f"-> {best.toxicity:.2f}%, perplexity {state.baseline.perplexity:.2f} -> {best.perplexity:.2f} "
            f"({best.perplexity / state.baseline.perplexity - 1:+.1%}), KL {best.kl:.4f}; front: {paths['md']}")
    if out is not None:
        from ..validate import save_or_rescue

        record = chosen_record(records[a.steering.index(best.steering)], best, state.baseline, a.max_ppl_increase,
                               prompts, neutral, best.steering)
        save_or_rescue(lambda p: save_record(p, record, overwrite=a.force), out)
        line += f"; wrote {out}"
    sys.stdout.write(line + "\n")
    return 0

