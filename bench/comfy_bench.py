"""Node-pack benchmark on a real ComfyUI (in-process), every family of devtools.comfy_families in one run.

Per family (ComfyUI's own class at reduced width/depth, random weights, loaded by UNETLoader's function,
a CONDITIONING of the family's real shapes; --device cpu: fp32 at 64 px), ratios as min over interleaved
repeats:
  (a) one LinEAS training step (engine fit, cached targets, hooks on every site of the default preset,
      backward into the steering only) / a bare forward+backward of the same forward (the guider's model
      call inside ComfyUI's sampling path, MSE on the output, backward to the input): target <= 1.15;
  (b) KSampler sampling with the steering hooked / unsteered (target <= 1.03) and folded / unsteered
      (target <= 1.01), with the fold report (sites folded / kept as hooks);
  sites and steering parameters at this build, and the bytes one training sample saves for backward
  (what the node measures to choose its micro-batch).
Memory at full size (bench/comfy_memory.py, meta device): SD1.5, SDXL (fp16 weights, trained in bf16 as the
node does on CUDA) and Flux.1-dev (fp8 weights, bf16 compute) at 1024 px, with the formula, the node's
defaults (batch 16, micro-batch auto, gradient checkpointing auto) on a 24 GB GPU, and a check of the meta
count against the same count on real tensors of a reduced build.

--device cuda runs (a)/(b) on the GPU in the family's default dtype and adds torch.cuda.max_memory_allocated
of one training step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import timing

GIB = 2**30


def _pack():
    return next(m for k, m in sys.modules.items() if k.endswith("comfyui-lineas") and hasattr(m, "comfy_entrypoint"))


def _engine():
    return sys.modules[_pack().__name__ + ".lineas_engine"]


def _helpers():
    p, eng = _pack(), _engine()
    return (lambda dm: p.nodes.api.choose_sites(dm, "all norms", ""), p.nodes.api.probe_widths,
            eng.Steering, eng.attach, p.nodes.api.checkpoint_units, p.nodes.api.inputs_copied)


def timeit(fn, repeats: int) -> list[float]:
    """Wall time (``--clock wall``, the default on CUDA) or this thread's CPU time (``--clock cpu``, the
    default on the CPU: other jobs on a shared machine then only cost cache, not waiting time)."""
    return timing.timeit(fn, repeats, time.perf_counter if CLOCK["kind"] == "wall" else time.thread_time)


CLOCK = {"kind": "cpu"}


def _random_map(steering, g):
    """A map away from the identity (scale 1 +- 0.1, shift +- 0.1) so that hooks and fold do real work."""
    with torch.no_grad():
        for s in steering.sites:
            d = steering.specs[s].dim
            steering.weight(s).copy_(1 + 0.1 * torch.randn(d, generator=g))
            steering.bias(s).copy_(0.1 * torch.randn(d, generator=g))
    return steering.cpu()


def _min(xs):
    return min(xs) if xs else float("nan")


def time_family(name: str, folder: Path, args, device) -> dict:
    """(a) and (b) for one family; returns a row of figures."""
    import comfy.model_management as mm

    import nodes
    from devtools.comfy_families import FAMILIES, load_family, make_conditioning

    p, eng = _pack(), _engine()
    fam = FAMILIES[name]
    loaded = load_family(fam, folder, weight_dtype="fp32" if device.type == "cpu" else "default",
                         real_width=args.real_width)
    model = loaded.model
    cond = make_conditioning(fam)
    hw = args.res // 8
    video_latents = fam.video or getattr(model.get_model_object("latent_format"), "latent_dimensions", 2) == 3
    shape = (fam.latent_channels, 1, hw, hw) if video_latents else (fam.latent_channels, hw, hw)
    g = torch.Generator().manual_seed(0)
    ms = model.get_model_object("model_sampling")
    if args.node_defaults:  # the training node's defaults: batch 16 over 8 noise levels, the loss per level
        levels = 8
        group = torch.arange(args.batch) % levels
        sig = torch.tensor([float(ms.percent_to_sigma(p)) for p in torch.linspace(0, 1, levels).tolist()])[group]
        sig = sig.clamp(max=float(ms.sigma_max))
        src = {"x": torch.randn(args.batch, *shape, generator=g) * sig.view(-1, *[1] * len(shape)),
               "sigma": sig, "lineas_group": group}
        tgt = {"x": src["x"] + 0.3, "sigma": sig.clone(), "lineas_group": group.clone()}
    else:
        sigma = float(ms.percent_to_sigma(0.5))
        src = {"x": torch.randn(args.batch, *shape, generator=g) * sigma, "sigma": torch.full((args.batch,), sigma)}
        tgt = {"x": torch.randn(args.batch, *shape, generator=g) * sigma + 0.3, "sigma": src["sigma"].clone()}
    row: dict = {"family": name, "class": fam.config_class}
    mem = p.nodes.api

    def body(model_call, base):
        dm = base.diffusion_model

        def forward(b):
            return model_call(b["x"].to(device), b["sigma"].to(device))

        with mem.trainable_weights(dm):
            sites = p.nodes.api.choose_sites(dm, "all norms", "")
            specs = p.nodes.api.probe_widths(dm, sites, lambda: forward(eng.slice_samples(src, slice(0, 1))))
            steering = eng.Steering(specs).to(device)
            row.update(sites=len(specs), steering_params=steering.num_parameters(),
                       model_params=sum(q.numel() for q in dm.parameters()))
            if args.sampling_only:
                return _random_map(steering, g)
            with p.nodes.api.inputs_copied(dm, list(specs)):
                row["saved_bytes_per_sample"] = mem.training_bytes_per_sample(dm, steering, forward, src)
                cfg = eng.TrainConfig(steps=1, batch_size=args.batch, mask_key=None, optimizer="adamw", lr=1e-2)
                warm = eng.fit(dm, steering, forward, src, tgt, config=cfg)

                def lineas_step():
                    eng.fit(dm, steering, forward, src, config=cfg, target_acts=warm.target_acts,
                            last_site=warm.last_site)

                def bare_step():
                    x = src["x"].to(device).clone().requires_grad_(True)
                    out = model_call(x, src["sigma"].to(device))
                    torch.nn.functional.mse_loss(out.float(), tgt["x"].to(device).float()).backward()

                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                    lineas_step()
                    row["cuda_peak_step_gib"] = torch.cuda.max_memory_allocated() / GIB
                t = {"bare": [], "lineas": []}
                for _ in range(args.repeats):
                    t["bare"] += timeit(bare_step, 1)
                    t["lineas"] += timeit(lineas_step, 1)
        row["bare_s"], row["lineas_s"] = _min(t["bare"]), _min(t["lineas"])
        row["train_ratio"] = row["lineas_s"] / row["bare_s"]
        return _random_map(steering, g)

    with torch.inference_mode(False), torch.enable_grad():
        clone = model.clone()
        if args.checkpointing:  # the training step with per-block checkpointing (bare fwd+bwd without)
            mem.add_checkpointing(clone)
        steering = p.nodes.api.run_in_sampling(clone, cond, (1,) + shape, body, seed=0)
    ref = _engine().SteeringRecord(steering, fingerprint={"architecture": p.nodes.api.architecture_of(model)})
    hooked, _ = p.nodes.api.apply_steering_report(model, ref, 1.0, mode="hooks")
    folded, report = p.nodes.api.apply_steering_report(model, ref, 1.0, mode="fold")
    row["fold_report"] = report.splitlines()[0]
    latent = {"samples": torch.zeros(1, *shape)}

    def sample(m):
        def run():
            with torch.inference_mode():
                return nodes.common_ksampler(m, 1, args.sample_steps, 1.5, "euler", "simple", cond, cond, latent,
                                             disable_noise=False)[0]["samples"]
        return run

    variants = {"none": model, "hooked": hooked, "folded": folded}
    outs = {k: sample(m)() for k, m in variants.items()}
    row["fold_vs_hooks_rel"] = float((outs["hooked"] - outs["folded"]).abs().max() / outs["hooked"].abs().max())
    st = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, m in variants.items():
            sample(m)()  # makes this clone the loaded one (ComfyUI patches weights at load): not timed,
            st[k] += timeit(sample(m), 1)  # a user sampling again with the same MODEL pays only this
    row["sample_times"] = st
    profiles = {k: op_profile(sample(m), device) for k, m in variants.items()}
    for k in ("hooked", "folded"):
        row[f"{k}_ops_ratio"], row[f"{k}_extra_ops"] = extra_op_cost(profiles["none"], profiles[k])
    row["sample_none_s"] = _min(st["none"])
    row["hooked_ratio"] = _min(st["hooked"]) / row["sample_none_s"]
    row["folded_ratio"] = _min(st["folded"]) / row["sample_none_s"]
    row["hooked_ratio_median"] = statistics.median(st["hooked"]) / statistics.median(st["none"])
    row["folded_ratio_median"] = statistics.median(st["folded"]) / statistics.median(st["none"])
    mm.unload_all_models()
    return row


def op_profile(run, device) -> dict[str, tuple[int, float]]:
    """One sampling call under torch.profiler (after a warm call that loads the clone): per aten op, the call
    count and the self time (device time on CUDA, CPU time otherwise), in microseconds."""
    from torch.profiler import ProfilerActivity, profile

    run()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        run()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return {e.key: (e.count, float(getattr(e, attr))) for e in prof.key_averages()}


def extra_op_cost(base: dict, other: dict) -> tuple[float, dict[str, int]]:
    """Sampling cost of ``other`` relative to ``base`` from what it runs in addition: for every op it calls
    more often, the extra calls times that op's mean self time, over the base's total op time. Differencing
    two wall times cannot resolve 1 % on a shared CPU (two identical computations differ by +-4 % here);
    this attributes the steering's own ops (addcmul per hooked site per model call, and any cast)."""
    total = sum(t for _, t in base.values())
    extra, calls = 0.0, {}
    for k, (c, t) in other.items():
        c0 = base.get(k, (0, 0.0))[0]
        if c > c0:
            extra += t / c * (c - c0)
            calls[k] = c - c0
    return 1 + extra / total, calls


MEMORY_CASES = [  # family, weight dtype, compute dtype the node trains in (nodes/_conditioning.py on CUDA)
    ("sd15", torch.float16, torch.bfloat16, "fp16 weights, bf16 compute"),
    ("sdxl", torch.float16, torch.bfloat16, "fp16 weights, bf16 compute"),
    ("flux_dev", torch.float8_e4m3fn, torch.bfloat16, "fp8_e4m3fn weights, bf16 compute"),
]


def memory_rows(res: int, gpu_gib: float, batch: int) -> list[dict]:
    from bench import comfy_memory as cm

    mem = _pack().nodes.api
    rows = []
    for fam, wd, cd, what in MEMORY_CASES:
        t0 = time.perf_counter()
        c = cm.count(cm.FULL[fam], cm.LATENT[fam], wd, cd, res, _helpers(), family=fam)
        free = gpu_gib * GIB - c.W  # after loading the weights, before training
        ckpt = True  # "auto": ComfyUI casts these weights per forward (fp8 / fp16 trained in bf16)
        m = mem.choose_micro_batch(c.per_sample(ckpt), free, batch) or batch
        try:  # checkpointing off: does even one sample fit?
            m_off = mem.choose_micro_batch(c.per_sample(False), free - c.C, batch) or batch
        except _engine().LineasError:
            m_off = 0
        rows.append({"family": fam, "dtypes": what, "res": res, "params": c.params, "sites": c.sites,
                     "steering_params": c.steering_params, "blocks": c.blocks, "W": c.W, "A": c.A, "C": c.C, "B": c.B,
                     "A_blk": c.A_blk, "C_blk": c.C_blk, "micro_batch": m, "peak_ckpt": c.peak(m, True),
                     "micro_batch_off": m_off, "peak_off_m1": c.peak(1, False), "peak_off": c.peak(max(m_off, 1), False),
                     "seconds": time.perf_counter() - t0})
    return rows


def meta_check(folder: Path, res: int = 256) -> dict:
    """The meta count of a reduced SDXL build against (1) the same count on its real tensors (CPU, fp32) and
    (2) the measured peak RSS of one real training step of that build, in a fresh child process
    (``python -m bench.comfy_memory``, ComfyUI's own CPU attention)."""
    import subprocess

    import comfy.model_management as mm

    from bench import comfy_memory as cm
    from devtools.comfy_families import FAMILIES, load_family

    spec = cm.reduced_spec("sdxl")
    loaded = load_family(FAMILIES["sdxl"], folder, weight_dtype="fp32")
    mm.load_models_gpu([loaded.model])
    dm = loaded.model.get_model_object("diffusion_model")
    mem = _pack().nodes.api
    with torch.inference_mode(False), mem.trainable_weights(dm):
        real = cm.count(spec, cm.LATENT["sdxl"], torch.float32, torch.float32, res, _helpers(), "sdxl-reduced",
                        base=loaded.model.model, device="cpu")
    meta = cm.count(spec, cm.LATENT["sdxl"], torch.float32, torch.float32, res, _helpers(), "sdxl-reduced")
    child = subprocess.run([sys.executable, "-m", "bench.comfy_memory", "--family", "sdxl", "--res", str(res)],
                           capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    measured = json.loads(child.stdout.strip().splitlines()[-1])
    return {"res": res, "real_A": real.A, "meta_A": meta.A, "real_C": real.C, "meta_C": meta.C,
            "sites": (real.sites, meta.sites), "rss_step_peak": measured["step_peak_over_before"]}


def _gib(b: float) -> str:
    return f"{b / GIB:.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench comfy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default="all", help="comma-separated names of devtools.comfy_families (default all)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--res", type=int, default=64, help="image size of the timing runs (px)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sample-steps", type=int, default=4)
    ap.add_argument("--gpu-gib", type=float, default=22.0, help="memory the estimate may use (a 24 GB card)")
    ap.add_argument("--clock", choices=["cpu", "wall"], help="timer (default: cpu time on the CPU, wall on CUDA)")
    ap.add_argument("--checkpointing", action="store_true", help="train with per-block gradient checkpointing")
    ap.add_argument("--node-defaults", action="store_true",
                    help="the training node's defaults: every site of 'all norms', batch 16 over 8 noise levels "
                         "(sets --batch 16), the OT loss per level")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--sampling-only", action="store_true", help="time sampling only (skip the training step)")
    ap.add_argument("--real-width", action="store_true",
                    help="the families' released widths (reduced depth): slower, closer to real sampling costs")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    if args.node_defaults:
        args.batch = 16

    from devtools.comfy_runtime import InProcessComfy, comfy_available

    ok, why = comfy_available()
    if not ok:
        print(f"skipped: {why}")
        return 0
    InProcessComfy(Path(tempfile.mkdtemp(prefix="lineas-bench-")), tiny_checkpoint=False, cpu=args.device == "cpu")
    from devtools.comfy_families import FAMILIES

    device = torch.device(args.device)
    CLOCK["kind"] = args.clock or ("cpu" if device.type == "cpu" else "wall")
    from devtools.comfy_runtime import families_dir

    folder = families_dir()
    names = list(FAMILIES) if args.families == "all" else args.families.split(",")
    out: dict = {"command": "python -m bench comfy " + " ".join(argv if argv is not None else sys.argv[2:]),
                 "threads": torch.get_num_threads(), "loadavg_start": os.getloadavg()[0], "families": [], "memory": []}
    out["clock"] = CLOCK["kind"]
    print(f"threads {torch.get_num_threads()}, loadavg {os.getloadavg()[0]:.2f}, device {device}, "
          f"{CLOCK['kind']} clock")
    if not args.no_timing:
        print(f"\n(a) training step / bare fwd+bwd, (b) sampling ({args.sample_steps} steps) hooked|folded / unsteered; "
              f"{args.res} px, batch {args.batch}, min of {args.repeats}")
        print(f"{'family':14s} {'sites':>5s} {'params':>8s} {'MiB/sample':>10s} {'bare s':>7s} {'step s':>7s} "
              f"{'train':>6s} {'hooked':>7s} {'folded':>7s}  fold")
        for name in names:
            try:
                r = time_family(name, folder, args, device)
            except Exception as e:  # noqa: BLE001 - one family's failure is reported, the run goes on
                r = {"family": name, "error": f"{type(e).__name__}: {str(e)[:200]}"}
                print(f"{name:14s} ERROR {r['error']}")
                out["families"].append(r)
                continue
            out["families"].append(r)
            nan = float("nan")
            print(f"{name:14s} {r['sites']:5d} {r['steering_params']:8d} "
                  f"{r.get('saved_bytes_per_sample', nan) / 2**20:10.1f} {r.get('bare_s', nan):7.3f} "
                  f"{r.get('lineas_s', nan):7.3f} {r.get('train_ratio', nan):6.3f} {r['hooked_ratio']:7.3f} "
                  f"{r['folded_ratio']:7.3f}  {r['fold_report']}  (none {r['sample_none_s']:.3f} s; medians "
                  f"{r['hooked_ratio_median']:.3f} / {r['folded_ratio_median']:.3f}; from the extra ops "
                  f"{r['hooked_ops_ratio']:.4f} / {r['folded_ops_ratio']:.4f}, {r['hooked_extra_ops']} / "
                  f"{r['folded_extra_ops']})")
    if not args.no_memory:
        print(f"\nmemory at 1024 px, full-size models (meta device), node defaults (batch 16, micro-batch auto, "
              f"checkpointing auto) within {args.gpu_gib:g} GiB")
        rows = memory_rows(1024, args.gpu_gib, 16)
        out["memory"] = rows
        print(f"{'family':9s} {'dtypes':34s} {'params':>7s} {'sites':>5s} {'W':>6s} {'A':>6s} {'C':>6s} {'B':>6s} "
              f"{'A_blk':>6s} {'C_blk':>6s} {'m':>3s} {'peak':>6s} | off: m=1 peak, m, peak  (GiB)")
        for r in rows:
            print(f"{r['family']:9s} {r['dtypes']:34s} {r['params'] / 1e9:6.2f}B {r['sites']:5d} {_gib(r['W']):>6s} "
                  f"{_gib(r['A']):>6s} {_gib(r['C']):>6s} {_gib(r['B']):>6s} {_gib(r['A_blk']):>6s} "
                  f"{_gib(r['C_blk']):>6s} {r['micro_batch']:3d} {_gib(r['peak_ckpt']):>6s} | "
                  f"{_gib(r['peak_off_m1'])}, {r['micro_batch_off']}, {_gib(r['peak_off'])}")
        chk = meta_check(folder)
        out["meta_check"] = chk
        print(f"meta count vs real tensors (reduced SDXL, {chk['res']} px, fp32): A {_gib(chk['meta_A'])} vs "
              f"{_gib(chk['real_A'])} GiB, C {chk['meta_C']} vs {chk['real_C']} B, sites {chk['sites']}")
        print(f"counted A {chk['meta_A'] / 2**20:.0f} MiB vs measured peak RSS of one real training step over the "
              f"RSS before it {chk['rss_step_peak'] / 2**20:.0f} MiB (the rest: transient working memory T, "
              f"not counted; the node leaves {1 - _pack().nodes._memory.FREE_FRACTION:.0%} of free memory for it)")
    out["loadavg_end"] = os.getloadavg()[0]
    print(f"\nloadavg at end {out['loadavg_end']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
