"""The family table of docs/families.md, measured: per family ComfyUI detects (built small by
devtools.comfy_families), the ComfyUI class, parameters, what the loader's detection needed overridden, the
sites / channels of the default preset and the QK norms, and the time of 2 training steps through the
training path (set-up included).

    python -m bench.families [--real-width] [family ...]
"""

from __future__ import annotations

from pathlib import Path

import torch

from devtools.comfy_families import FAMILIES, load_family, make_conditioning, make_vae


def main() -> None:
    import argparse
    import importlib
    import sys
    import tempfile
    import time

    from devtools.comfy_runtime import InProcessComfy, families_dir

    ap = argparse.ArgumentParser()
    ap.add_argument("--real-width", action="store_true")
    ap.add_argument("families", nargs="*", default=list(FAMILIES))
    a = ap.parse_args()
    InProcessComfy(Path(tempfile.mkdtemp(prefix="lineas-fam-")), tiny_checkpoint=False)
    api = importlib.import_module(next(m for m in sys.modules if m.endswith("nodes.api") and "lineas" in m))
    print("| family | ComfyUI class | params (M) | detection overrides | default sites | channels | QK norms | 2 train steps incl. set-up (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in a.families:
        lf = load_family(name, families_dir(), "fp32", real_width=a.real_width)
        dm = lf.model.model.diffusion_model
        params = sum(p.numel() for p in dm.parameters()) / 1e6
        qk = sum(1 for n, m in dm.named_modules() if n and api.is_qk_norm(n) and not list(m.children()))
        imgs = torch.rand(4, 64, 64, 3, generator=torch.Generator().manual_seed(0))
        t0 = time.perf_counter()
        with torch.inference_mode(False), torch.enable_grad():
            ref, res = api.train_style(lf.model, make_vae(lf.family.latent_channels), imgs[:2], imgs[2:],
                                            make_conditioning(lf.family), steps=2, lr=0.01, optimizer="adamw",
                                            sparsity=0.0, preset="all norms", regex="", noise_start=0.0,
                                            noise_end=1.0, levels=2, batch_size=4, micro_batch=0, seed=0)
        dt = time.perf_counter() - t0
        chans = sum(s.dim for s in ref.steering.specs.values())
        over = ", ".join(sorted(k for k in lf.overridden)) or "none"
        print(f"| {name} | {lf.family.config_class} | {params:.1f} | {over} | {len(ref.steering.sites)} | {chans} | "
              f"{qk} | {dt:.2f} |", flush=True)


if __name__ == "__main__":
    main()
