"""The --preserve term's own cost per training step on a real LM: the next-token KL and its backward over one
batch of the embedded preserve passages, from the unsteered logits (two log-softmaxes a step, what training
did before) against from the kept targets (p_base and sum p log p, one log-softmax a step), interleaved in one
run, min over repeats; the model's forward is not timed (the same in both). Also checks that both give the same
value and gradient.

    python -m bench preserve --model smollm2 [--device cuda]
"""

from __future__ import annotations

import argparse
import sys

import torch

from bench.timing import ratio_table, timeit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench preserve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch", type=int, default=8, help="passages per step (the default of kl_regularizer)")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)

    from llm_sidecar.models import load_model
    from llm_sidecar.perplexity import encode_scored
    from llm_sidecar.preserve import embedded_preserve_texts, kl_to_targets, next_token_kl, unsteered_targets

    lm = load_model(a.model, device=a.device)
    enc = encode_scored(lm.tokenizer, embedded_preserve_texts()[: a.batch], 128)
    ids, attn = enc["input_ids"].to(lm.device), enc["attention_mask"].to(lm.device)
    with torch.no_grad():
        base = lm.model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        steered = base + 0.5 * torch.randn_like(base)  # stands in for the steered logits: the same shapes and work
    mask = attn[:, 1:]
    lengths = attn.sum(dim=1).tolist()
    valid = mask.bool()
    kept = [unsteered_targets(base[r, : n - 1]) for r, n in enumerate(lengths)]  # as kl_regularizer keeps them

    def from_logits():
        x = steered.clone().requires_grad_(True)
        loss = next_token_kl(base, x, mask)
        loss.backward()
        return loss.detach(), x.grad

    def from_kept():  # what a training step does: the batch's kept texts concatenated, the logits gathered
        x = steered.clone().requires_grad_(True)
        p, neg = torch.cat([k[0] for k in kept]), torch.cat([k[1] for k in kept])
        loss = kl_to_targets(p, neg, x[valid]).mean()
        loss.backward()
        return loss.detach(), x.grad

    (v0, g0), (v1, g1) = from_logits(), from_kept()
    same = torch.allclose(v0, v1, rtol=1e-5, atol=1e-7) and torch.allclose(g0, g1, rtol=1e-4, atol=1e-9)
    times: dict[str, list[float]] = {"from the unsteered logits (before)": [], "from the kept targets (now)": []}
    for _ in range(a.repeats):  # interleaved
        times["from the unsteered logits (before)"] += timeit(from_logits, 1)
        times["from the kept targets (now)"] += timeit(from_kept, 1)
    sys.stdout.write(f"{a.model} on {lm.device}, {a.batch} passages, {int(mask.sum())} predicted positions x "
                     f"{base.shape[-1]} vocabulary; the KL and its backward, s (min [median]):\n")
    sys.stdout.write(ratio_table(times, "from the unsteered logits (before)") + "\n")
    sys.stdout.write(f"same value and gradient: {same} (KL {float(v0):.6f} vs {float(v1):.6f})\n")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
