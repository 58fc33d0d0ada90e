"""`python -m bench loss [--device cuda]`: the OT loss of one training step at the node's defaults, before and
after packing (one sort per noise group over all sites, the target sorted once).

Shapes: SDXL's 256 default sites (widths of its norms: 320 / 640 / 1280 channels), the node's batch of 16
samples over 8 noise levels (2 per level) against a target of the same size. "before" is the per-site,
per-group loop the engine ran until now (``wasserstein_1d_sq`` per site, index tensors moved per call),
re-stated here as the baseline; "after" is ``lineas_engine.grouped_loss`` with a cached ``SortedTarget``.
Printed: aten ops per step (forward + backward, torch.profiler), host-to-device copies and device syncs
per step (``aten::_to_copy`` / ``copy_`` from the CPU, ``item`` / ``_local_scalar_dense`` / ``nonzero``:
on a GPU each blocks the host), and the time per step (CPU thread time, or wall time on CUDA).
"""

from __future__ import annotations

import argparse
import time

import torch

from lineas_engine import grouped_loss, wasserstein_1d_sq
from lineas_engine.packed_loss import SortedTarget

SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero")


def sdxl_widths() -> list[int]:
    """256 sites with SDXL's norm widths (GroupNorms and LayerNorms of its 3 levels)."""
    return [320] * 40 + [640] * 72 + [1280] * 144


def per_site_loss(src, tgt, src_groups, tgt_groups):
    """The loss as the engine computed it before: per group, per site, indices moved each call."""
    terms = []
    for g in torch.unique(src_groups).tolist():
        si = (src_groups == g).nonzero().flatten()
        ti = (tgt_groups == g).nonzero().flatten()
        site_terms = []
        for k, v in src.items():
            x = v.index_select(0, si.to(v.device)).float()
            y = tgt[k].index_select(0, ti.to(v.device)).float()
            site_terms.append(wasserstein_1d_sq(x, y).mean())
        terms.append(torch.stack([t.to(site_terms[0].device) for t in site_terms]).mean())
    return torch.stack(terms).mean()


def profile_step(step, device) -> dict:
    from torch.profiler import ProfilerActivity, profile

    step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
    ev = prof.key_averages()
    ops = sum(e.count for e in ev if e.key.startswith("aten::"))
    syncs = sum(e.count for e in ev if e.key in SYNC_OPS)
    copies = sum(e.count for e in ev if e.key in ("aten::_to_copy", "aten::copy_"))
    return {"aten_ops": ops, "syncs": syncs, "copies": copies}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench loss", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--levels", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    widths = sdxl_widths()
    groups = torch.arange(a.batch) % a.levels
    src = {f"s{i}": torch.randn(a.batch, d, generator=g).to(device).requires_grad_(True) for i, d in enumerate(widths)}
    tgt = {k: torch.randn(a.batch, v.shape[1], generator=g).to(device) + 0.3 for k, v in src.items()}
    sorted_target = SortedTarget(tgt, list(src), groups, "mean", device)
    clock = time.perf_counter if device.type == "cuda" else time.thread_time

    def before():
        per_site_loss(src, tgt, groups, groups).backward()

    def after():
        grouped_loss(src, sorted_target, groups, None, "mean").backward()

    ref = per_site_loss(src, tgt, groups, groups)
    new = grouped_loss(src, sorted_target, groups, None, "mean")
    print(f"{len(widths)} sites ({sum(widths)} channels), batch {a.batch}, {a.levels} noise levels, {device}")
    print(f"same loss: before {float(ref.detach()):.9g}, after {float(new.detach()):.9g}")
    print(f"{'':8s} {'aten ops':>9s} {'syncs':>6s} {'copies':>7s} {'ms/step':>8s}")
    for name, fn in (("before", before), ("after", after)):
        prof = profile_step(fn, device)
        times = []
        for _ in range(a.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = clock()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(clock() - t0)
        print(f"{name:8s} {prof['aten_ops']:9d} {prof['syncs']:6d} {prof['copies']:7d} {1e3 * min(times):8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
