"""Node-pack benchmark on a real ComfyUI (in-process, CPU) with the tiny SD1.5-format checkpoint that
the tests build (~26M-parameter UNet, 64 px images, 8x8 latents).

Prints, from one run, as ratios (min over interleaved repeats):
  (a) one LinEAS training step (engine fit, cached targets, hooks on all 27 norms, OT loss, backward into
      the steering only) against a plain forward+backward of the same UNet on the same batch (x0-MSE,
      backward to the input), both through ComfyUI's trainable clone;
  (b) sampling (KSampler, euler, N steps) with the steering hooked and folded against no steering.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from bench.timing import ratio_table, timeit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench comfy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sample-steps", type=int, default=10)
    args = ap.parse_args(argv)

    from bench.comfy_runtime import InProcessComfy, comfy_available

    ok, why = comfy_available()
    if not ok:
        print(f"skipped: {why}")
        return 0
    InProcessComfy(Path(tempfile.mkdtemp(prefix="lineas-bench-")))  # loads ComfyUI + the pack in-process
    import comfy.model_management as mm

    import nodes

    pack = next(m for k, m in sys.modules.items() if k.endswith("comfyui-lineas") and hasattr(m, "comfy_entrypoint"))
    from lineas_engine import Steering, SteeringRecord, TrainConfig, find_sites, fit, site_specs

    with torch.inference_mode():
        model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")[:3]
        pos = nodes.CLIPTextEncode().encode(clip, "a picture")[0]
        neg = nodes.CLIPTextEncode().encode(clip, "")[0]
    g = torch.Generator().manual_seed(0)
    imgs_a, imgs_b = torch.rand(args.batch, 64, 64, 3, generator=g), torch.rand(args.batch, 64, 64, 3, generator=g)
    tr = pack.nodes._training
    with torch.inference_mode(False), torch.enable_grad():
        src = tr._noised_samples(model, vae, imgs_a, [0.5], 0)
        tgt = tr._noised_samples(model, vae, imgs_b, [0.5], 1)
        patcher = tr._trainable_clone(model)
        mm.load_models_gpu([patcher])
        base, dm = patcher.model, patcher.get_model_object("diffusion_model")
        ctx = torch.zeros(1, 77, 768)
        fwd = lambda b: base.apply_model(b["x"], b["sigma"], c_crossattn=ctx.expand(b["x"].shape[0], -1, -1))  # noqa: E731
        specs = site_specs(dm, find_sites(dm, preset="norms"))
        steering = Steering(specs)
        warm = fit(dm, steering, fwd, src, tgt, config=TrainConfig(steps=1, batch_size=args.batch, mask_key=None))
        cfg = TrainConfig(steps=1, batch_size=args.batch, mask_key=None, optimizer="adamw", lr=1e-2)

        def lineas_step():
            fit(dm, steering, fwd, src, config=cfg, target_acts=warm.target_acts, last_site=warm.last_site)

        def plain_step():
            for p in dm.parameters():
                if p.requires_grad and not p.is_inference():
                    p.requires_grad_(False)
            x = src["x"].clone().requires_grad_(True)
            out = base.apply_model(x, src["sigma"], c_crossattn=ctx.expand(x.shape[0], -1, -1))
            torch.nn.functional.mse_loss(out, tgt["x"]).backward()

        times = {"plain fwd+bwd": [], "lineas step": []}
        for _ in range(args.repeats):
            times["plain fwd+bwd"] += timeit(plain_step, 1)
            times["lineas step"] += timeit(lineas_step, 1)
    print(f"UNet {sum(p.numel() for p in dm.parameters()) / 1e6:.1f}M params, {len(specs)} sites, batch {args.batch} "
          f"x 8x8 latents, threads {torch.get_num_threads()}, loadavg {os.getloadavg()[0]:.2f}")
    print(f"\n(a) training step, min of {args.repeats} (median), seconds")
    print(ratio_table(times, "plain fwd+bwd", 24))

    with torch.no_grad():
        for s in steering.sites:
            steering.weight(s).copy_(1 + 0.1 * torch.randn(steering.specs[s].dim, generator=g))
            steering.bias(s).copy_(0.1 * torch.randn(steering.specs[s].dim, generator=g))
    ref = SteeringRecord(steering=steering, fingerprint={"architecture": "SD15"})
    apply = pack.nodes._patcher.apply_steering
    variants = {"none": model, "hooked": apply(model, ref, 1.0, mode="hooks"), "folded": apply(model, ref, 1.0, mode="fold")}
    latent = {"samples": torch.zeros(2, 4, 8, 8)}

    def sample(m):
        def run():
            with torch.inference_mode():
                return nodes.common_ksampler(m, 1, args.sample_steps, 5.0, "euler", "normal", pos, neg, latent,
                                             disable_noise=False)[0]["samples"]
        return run

    outs = {k: sample(m)() for k, m in variants.items()}
    diff = float((outs["hooked"] - outs["folded"]).abs().max() / outs["hooked"].abs().max())
    stimes = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, m in variants.items():
            stimes[k] += timeit(sample(m), 1)
    print(f"\n(b) sampling {args.sample_steps} steps, batch 2, min of {args.repeats} (median), seconds "
          f"(folded vs hooked latents, max rel diff {diff:.1e})")
    print(ratio_table(stimes, "none", 24))
    print(f"\nloadavg at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
