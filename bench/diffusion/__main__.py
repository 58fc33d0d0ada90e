"""``python -m bench.diffusion train --out DIR`` (the recipe; a tiny check: ``--vae-steps 20 --unet-steps
20``), ``python -m bench.diffusion sample --ckpt FILE --out grid.png`` (through ComfyUI's nodes),
``python -m bench.diffusion steer`` (the style-steering benchmark through ComfyUI's nodes),
``python -m bench.diffusion time`` (seconds per training step of each stage, to size a full run),
``python -m bench.diffusion train-dit`` / ``steer-dit`` (a Flux DiT and the QK-norm benchmark on it).
Set OMP_NUM_THREADS / --threads to the cores you mean to use."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch


def _common(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's / OMP_NUM_THREADS)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae-steps", type=int)
    ap.add_argument("--vae-batch", type=int)
    ap.add_argument("--vae-lr", type=float)
    ap.add_argument("--unet-steps", type=int)
    ap.add_argument("--unet-batch", type=int)
    ap.add_argument("--unet-lr", type=float)
    ap.add_argument("--unet-middle", type=int, help="-2 none, -1 res block only, >=0 res+transformer(depth)+res")
    ap.add_argument("--unet-res-blocks", type=int)
    ap.add_argument("--latent-crops", type=int)
    ap.add_argument("--limit-per-class", type=int, help="first N images of each folder only (quick checks)")
    ap.add_argument("--no-bf16", action="store_true", help="train in fp32 (about 2x slower on this CPU)")


def _config(args):
    from bench.diffusion.recipe import RecipeConfig

    cfg = RecipeConfig(seed=args.seed)
    overrides = (("vae_steps", cfg.vae, "steps"), ("vae_batch", cfg.vae, "batch"), ("vae_lr", cfg.vae, "lr"),
                 ("unet_steps", cfg.unet, "steps"), ("unet_batch", cfg.unet, "batch"), ("unet_lr", cfg.unet, "lr"),
                 ("unet_middle", cfg.unet, "middle"), ("unet_res_blocks", cfg.unet, "num_res_blocks"),
                 ("latent_crops", cfg, "latent_crops"), ("limit_per_class", cfg, "limit_per_class"))
    for attr, target, name in overrides:
        if getattr(args, attr) is not None:
            setattr(target, name, getattr(args, attr))
    if args.no_bf16:
        cfg.vae.bf16 = cfg.unet.bf16 = False
    cfg.vae.log_every = max(1, min(cfg.vae.log_every, cfg.vae.steps // 10 or 1))
    cfg.unet.log_every = max(1, min(cfg.unet.log_every, cfg.unet.steps // 10 or 1))
    return cfg


def cmd_train(args) -> int:
    from bench.diffusion.recipe import FILES, run, write_report
    from bench.diffusion.sample import sample_grid

    cfg = _config(args)
    out = Path(args.out).expanduser()
    report = run(cfg, out)
    if args.samples:
        report["samples"] = sample_grid(out / FILES["checkpoint"], out / "samples.png", args.samples,
                                        args.sample_seed, args.sample_steps, judge_path=out / FILES["judge"])
        write_report(out, report)
    st = report["stages"]
    print(f"out: {out}  ({report['seconds']:.1f} s, {report['threads']} threads, "
          f"load {report['loadavg_start']} -> {report['loadavg_end']})")
    print(f"split: train {report['split']['train']}  test {report['split']['test']}")
    v, u, j = st["vae"], st["unet"], st["judge"]
    print(f"vae:  {v['steps']} steps x {v['batch']}  {v['seconds']:.1f} s  {v['s_per_step']:.3f} s/step "
          f"(median {v['s_per_step_median']})  test psnr {v['test']['psnr']} dB{'  [cached]' if v['cached'] else ''}")
    print(f"unet: {u['steps']} steps x {u['batch']}  {u['seconds']:.1f} s  {u['s_per_step']:.3f} s/step "
          f"(median {u['s_per_step_median']})  last loss {u['loss_curve'][-1][1] if u['loss_curve'] else None}  "
          f"test eps-mse (EMA) {u.get('eval_eps_mse_ema')}{'  [cached]' if u['cached'] else ''}")
    print(f"judge: test accuracy round-trip {j['test_roundtrip']}  original {j['test_original']}")
    print(f"checkpoint: {out / FILES['checkpoint']}  ({st['checkpoint']['bytes'] / 1e6:.0f} MB)")
    if "samples" in report:
        s = report["samples"]
        print(f"samples: {s['grid']}  ({s['seconds']:.1f} s)  judged illustration: "
              f"{s.get('judged_illustration_fraction')}")
    return 0


def cmd_train_dit(args) -> int:
    from bench.diffusion.dit_recipe import DiTRecipeConfig, run

    cfg = DiTRecipeConfig(seed=args.seed)
    for attr, target, name in (("vae_steps", cfg.vae, "steps"), ("dit_steps", cfg.dit, "steps"),
                               ("dit_batch", cfg.dit, "batch"), ("dit_hidden", cfg.dit, "hidden"),
                               ("dit_depth", cfg.dit, "depth"), ("dit_single", cfg.dit, "single"),
                               ("latent_crops", cfg, "latent_crops"), ("limit_per_class", cfg, "limit_per_class")):
        if getattr(args, attr) is not None:
            setattr(target, name, getattr(args, attr))
    cfg.vae.log_every = max(1, min(cfg.vae.log_every, cfg.vae.steps // 10 or 1))
    cfg.dit.log_every = max(1, min(cfg.dit.log_every, cfg.dit.steps // 10 or 1))
    out = Path(args.out).expanduser()
    report = run(cfg, out)
    st = report["stages"]
    print(f"out: {out}  ({report['seconds']:.1f} s, {report['threads']} threads)")
    print(f"vae16: {st['vae']['steps']} steps  {st['vae']['seconds']:.1f} s  test psnr {st['vae']['test']['psnr']} dB")
    d = st["dit"]
    print(f"dit: {d['steps']} steps x {d['batch']}  {d['params'] / 1e6:.1f}M params  {d['seconds']:.1f} s  "
          f"{d['s_per_step']:.3f} s/step  last loss {d['loss_curve'][-1][1] if d['loss_curve'] else None}  "
          f"test v-mse (EMA) {d.get('eval_v_mse_ema')}")
    print(f"judge: test accuracy round-trip {st['judge']['test_roundtrip']}  original {st['judge']['test_original']}")
    return 0


def cmd_sample(args) -> int:
    from bench.diffusion.sample import sample_grid

    res = sample_grid(Path(args.ckpt), Path(args.out), args.n, args.seed, args.steps,
                      judge_path=Path(args.judge) if args.judge else None)
    print(json.dumps(res, indent=1))
    return 0


def cmd_time(args) -> int:
    """Seconds per training step of the VAE and the UNet at the configured batches (real data)."""
    import os

    from bench.diffusion.data import load_styles
    from bench.diffusion.unet import train_unet
    from bench.diffusion.vae import to_latents, train_vae

    cfg = _config(args)
    cfg.vae.steps = cfg.unet.steps = args.steps
    cfg.vae.log_every = cfg.unet.log_every = args.steps
    data = load_styles(Path(cfg.styles), cfg.size, cfg.aug_size, cfg.test_fraction, cfg.seed, cfg.limit_per_class)
    load0 = os.getloadavg()
    vae, v = train_vae(data, cfg.vae, cfg.seed)
    t = time.perf_counter()
    lat = to_latents(vae, data.x_train)
    enc = (time.perf_counter() - t) / data.x_train.shape[0]
    _, u = train_unet(lat, cfg.unet, cfg.seed)
    print(f"threads {torch.get_num_threads()}  load {[round(x, 2) for x in load0]} -> "
          f"{[round(x, 2) for x in os.getloadavg()]}  bf16 {cfg.unet.bf16}")
    print(f"vae  step (batch {cfg.vae.batch}): median {v['s_per_step_median']:.3f} s  mean {v['s_per_step']:.3f} s")
    print(f"unet step (batch {cfg.unet.batch}, {u['params'] / 1e6:.1f}M params): median "
          f"{u['s_per_step_median']:.3f} s  mean {u['s_per_step']:.3f} s")
    print(f"latent encode: {enc * 1000:.1f} ms / image")
    return 0


def cmd_steer(args) -> int:
    from bench.diffusion.data import default_styles_root
    from bench.diffusion.steer_bench import BenchConfig, markdown, run

    ckpt, judge = Path(args.ckpt).expanduser(), Path(args.judge).expanduser()
    for flag, path in (("--ckpt", ckpt), ("--judge", judge)):
        if not path.is_file():
            sys.stderr.write(f"{flag} {path} not found: run `python -m bench.diffusion train` first (or pass {flag})\n")
            return 2
    cfg = BenchConfig(ckpt=str(ckpt), judge=str(judge), styles=str(args.styles or default_styles_root()),
                      eval_n=args.n, train_steps=args.train_steps, learning_rate=args.lr,
                      batch_size=args.batch_size, strengths=tuple(args.strengths), sample_steps=args.steps,
                      methods=tuple(args.methods), sites=args.sites, noise_start=args.noise_start,
                      noise_end=args.noise_end, noise_levels=args.noise_levels, eval_seed=args.eval_seed,
                      source_seed=args.source_seed)
    res = run(cfg, Path(args.out).expanduser())
    print(markdown(res))
    print(json.dumps(res["comparison"], indent=1))
    return 0


def cmd_steer_dit(args) -> int:
    from bench.diffusion.dit_recipe import FILES
    from bench.diffusion.steer_dit import config_from_recipe, markdown, run

    folder = Path(args.dir).expanduser()
    if not (folder / FILES["report"]).is_file() or not (folder / FILES["dit"]).is_file():
        sys.stderr.write(f"--dir {folder}: no trained DiT there: run `python -m bench.diffusion train-dit` first\n")
        return 2
    cfg = config_from_recipe(folder, eval_n=args.n, train_steps=args.train_steps, learning_rate=args.lr,
                             batch_size=args.batch_size, strengths=tuple(args.strengths), sample_steps=args.steps,
                             presets=tuple(args.presets), noise_levels=args.noise_levels,
                             source_seed=args.source_seed, eval_seed=args.eval_seed, regex=args.regex)
    res = run(cfg, Path(args.out).expanduser() if args.out else folder / "steer_bench")
    print(markdown(res))
    print(json.dumps(res["comparison"], indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    from bench.diffusion.dit_recipe import default_out as dit_out
    from bench.diffusion.recipe import CKPT_NAME, FILES, default_out

    ap = argparse.ArgumentParser(prog="python -m bench.diffusion", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="run the recipe (cached stages are reused)")
    _common(tr)
    tr.add_argument("--out", default=str(default_out()))
    tr.add_argument("--samples", type=int, default=16, help="images to generate through ComfyUI at the end (0: none)")
    tr.add_argument("--sample-seed", type=int, default=0)
    tr.add_argument("--sample-steps", type=int, default=20)
    td = sub.add_parser("train-dit", help="the DiT variant: 16-channel TAESD + a reduced Flux (ComfyUI's class)")
    td.add_argument("--out", default=str(dit_out()))
    td.add_argument("--threads", type=int, default=0)
    td.add_argument("--seed", type=int, default=0)
    td.add_argument("--vae-steps", type=int)
    td.add_argument("--dit-steps", type=int)
    td.add_argument("--dit-batch", type=int)
    td.add_argument("--dit-hidden", type=int, help="a multiple of 128")
    td.add_argument("--dit-depth", type=int, help="double-stream blocks")
    td.add_argument("--dit-single", type=int, help="single-stream blocks")
    td.add_argument("--latent-crops", type=int)
    td.add_argument("--limit-per-class", type=int)
    sa = sub.add_parser("sample", help="generate an image grid from a checkpoint through ComfyUI's nodes")
    sa.add_argument("--ckpt", required=True)
    sa.add_argument("--out", required=True, help="grid PNG")
    sa.add_argument("--n", type=int, default=16)
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--steps", type=int, default=20)
    sa.add_argument("--judge", help="judge.safetensors: also report p(illustration) per image")
    sa.add_argument("--threads", type=int, default=0)
    st = sub.add_parser("steer", help="the style-steering benchmark through ComfyUI's nodes (LinEAS vs layer-wise)")
    st.add_argument("--ckpt", default=str(default_out() / CKPT_NAME))
    st.add_argument("--judge", default=str(default_out() / FILES["judge"]))
    st.add_argument("--styles", default="", help="styles root (default ../shared/data/styles)")
    st.add_argument("--out", default=str(default_out() / "steer_bench"))
    st.add_argument("--n", type=int, default=128, help="samples per strength")
    st.add_argument("--steps", type=int, default=20, help="sampler steps")
    st.add_argument("--train-steps", type=int, default=150)
    st.add_argument("--lr", type=float, default=0.01)
    st.add_argument("--batch-size", type=int, default=64)
    st.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
    st.add_argument("--methods", nargs="+", default=["lineas", "layer-wise"], choices=["lineas", "layer-wise"])
    st.add_argument("--sites", default="all norms")
    st.add_argument("--noise-start", type=float, default=0.0, help="first training noise level (percent of schedule)")
    st.add_argument("--noise-end", type=float, default=1.0)
    st.add_argument("--noise-levels", type=int, default=8)
    st.add_argument("--source-seed", type=int, default=1000, help="seed of the 32 source generations")
    st.add_argument("--eval-seed", type=int, default=0, help="seed of the evaluation samples (all strengths)")
    st.add_argument("--threads", type=int, default=0)
    sd = sub.add_parser("steer-dit", help="the style-steering benchmark on the DiT: QK norms in or out")
    sd.add_argument("--dir", default=str(dit_out()), help="the train-dit output folder")
    sd.add_argument("--out", default="", help="default: DIR/steer_bench")
    sd.add_argument("--n", type=int, default=128, help="samples per strength")
    sd.add_argument("--steps", type=int, default=20, help="sampler steps")
    sd.add_argument("--train-steps", type=int, default=150)
    sd.add_argument("--lr", type=float, default=0.01)
    sd.add_argument("--batch-size", type=int, default=64)
    sd.add_argument("--noise-levels", type=int, default=8)
    sd.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
    sd.add_argument("--presets", nargs="+", default=["all norms", "all norms + QK norms"])
    sd.add_argument("--regex", default="", help="sites of the preset 'custom regex', e.g. '.*(query|key)_norm'")
    sd.add_argument("--source-seed", type=int, default=1000, help="seed of the 32 source generations")
    sd.add_argument("--eval-seed", type=int, default=0, help="seed of the evaluation samples (all strengths)")
    sd.add_argument("--threads", type=int, default=0)
    ti = sub.add_parser("time", help="seconds per training step (a few steps of each stage)")
    _common(ti)
    ti.add_argument("--steps", type=int, default=5)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    commands = {"train": cmd_train, "train-dit": cmd_train_dit, "sample": cmd_sample, "time": cmd_time,
                "steer": cmd_steer, "steer-dit": cmd_steer_dit}
    return commands[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
