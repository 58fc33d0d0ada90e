"""Training memory of the full-size models at 1024 px, counted on PyTorch's meta device (no weights, no
compute): ComfyUI's own model classes at the released configs, the training forward (steering hooks on
every site of the node's default preset), and torch's saved-tensor hooks counting what autograd keeps for
backward. Used by ``python -m bench comfy`` (bench/comfy_bench.py), which also checks the count against the
measured peak RSS of a real training step of a reduced build on the CPU (:func:`measure_step`, run in a child
process: ``python -m bench.comfy_memory``). These are COUNTS for the full models; on a GPU,
``python -m bench comfy --device cuda`` measures ``torch.cuda.max_memory_allocated`` of a step instead.

What is counted, per sample (batch 1), in bytes:
  W   resident weights (parameters in their stored dtype, e.g. fp8 = 1 byte)
  A   activations saved for backward (every saved tensor that is not a weight; each storage once, however
      many ops save it or views of it)
  C   weight copies saved for backward: ComfyUI casts weights per forward when they are stored in another
      dtype than the compute dtype (fp8 -> bf16, fp16 trained in bf16); 0 otherwise
  Attention: on meta, scaled_dot_product_attention takes the math path and would save the [N, N] scores;
  CUDA's flash / memory-efficient kernels save q, k, v, the output and a logsumexp instead, which is
  what is counted (ComfyUI's ``optimized_attention_override`` hook computes the real call uncounted).
Gradient checkpointing per block (nodes/_memory.py) keeps only each block's inputs (B = sum over blocks,
tensors counted once) plus, during one block's recompute, that block's own A_blk and C_blk:
  no checkpointing: peak = W + C + m * A + T
  checkpointing:    peak = W + max_blk C_blk + m * (B + max_blk A_blk) + T
with m the micro-batch and T the transient working memory of one forward (not counted here; the node keeps
30 % of free memory for it, FREE_FRACTION in nodes/_memory.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

GIB = 2**30

# Released configurations (the values ComfyUI detects from the real checkpoints' keys)
FULL = {
    "sd15": ("SD15", {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
                      "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
                      "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
                      "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
                      "context_dim": 768, "num_heads": 8, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                      "use_temporal_attention": False, "use_temporal_resblock": False},
             {"context": (77, 768), "y": None}),
    "sdxl": ("SDXL", {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
                      "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
                      "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
                      "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
                      "context_dim": 2048, "num_head_channels": 64,
                      "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
                      "use_temporal_attention": False, "use_temporal_resblock": False},
             {"context": (77, 2048), "y": 2816}),
    "flux_dev": ("Flux", {"image_model": "flux", "in_channels": 16, "patch_size": 2, "out_channels": 16,
                          "vec_in_dim": 768, "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0,
                          "num_heads": 24, "depth": 19, "depth_single_blocks": 38, "axes_dim": [16, 56, 56],
                          "theta": 10000, "qkv_bias": True, "guidance_embed": True},
                 {"context": (512, 4096), "y": 768, "guidance": 3.5}),
}
LATENT = {"sd15": (4, 8), "sdxl": (4, 8), "flux_dev": (16, 8)}  # channels, pixels per latent pixel


@dataclass
class Count:
    family: str
    weight_dtype: str
    compute_dtype: str
    res: int
    params: int
    W: int
    A: int
    C: int
    B: int
    A_blk: int
    C_blk: int
    sites: int
    steering_params: int
    blocks: int

    def peak(self, m: int, checkpointing: bool) -> int:
        if checkpointing:
            return self.W + self.C_blk + m * (self.B + self.A_blk)
        return self.W + self.C + m * self.A

    def per_sample(self, checkpointing: bool) -> int:
        return self.B + self.A_blk if checkpointing else self.A


class _Counter:
    """Saved-tensor accounting: weights (by identity of the parameter objects) vs copies vs activations,
    attributed to the block running at the time."""

    def __init__(self, params: list[torch.Tensor]):
        self.param_ids = {id(p) for p in params}
        self.param_shapes = {(tuple(p.shape), p.dtype) for p in params}
        self.shape_only = {tuple(p.shape) for p in params if p.dim() >= 2}
        self.A = self.C = 0
        self.seen: set[int] = set()  # storages already counted
        self.kept: list[torch.Tensor] = []
        self.block: str | None = None
        self.A_blk: dict[str, int] = {}
        self.C_blk: dict[str, int] = {}
        self.paused = False

    def _first_time(self, t: torch.Tensor) -> bool:
        """A tensor saved by several ops (a norm's output kept by the next linear and by the steering's
        addcmul), or views of one storage, is one piece of memory: counted the first time only."""
        key = t.untyped_storage()._cdata
        if key in self.seen:
            return False
        self.seen.add(key)
        self.kept.append(t)  # alive until the count ends, so no later storage can reuse its address
        return True

    def pack(self, t: torch.Tensor):
        if self.paused or id(t) in self.param_ids or not self._first_time(t):
            return t
        n = t.untyped_storage().nbytes()
        shape = tuple(t.shape)
        is_weight_shape = shape in self.shape_only or (t.dim() == 2 and shape[::-1] in self.shape_only)
        resident = (shape, t.dtype) in self.param_shapes or (shape[::-1], t.dtype) in self.param_shapes
        if is_weight_shape and not resident:  # a cast copy of a weight
            self.C += n
            if self.block:
                self.C_blk[self.block] = self.C_blk.get(self.block, 0) + n
        elif is_weight_shape:  # the weight itself (a view of it): resident, not new memory
            pass
        else:
            self.A += n
            if self.block:
                self.A_blk[self.block] = self.A_blk.get(self.block, 0) + n
        return t

    def add_flash(self, tensors) -> None:
        n = sum(t.numel() * t.element_size() for t in tensors if self._first_time(t))
        self.A += n
        if self.block:
            self.A_blk[self.block] = self.A_blk.get(self.block, 0) + n

    @contextlib.contextmanager
    def pause(self):
        self.paused = True
        try:
            yield
        finally:
            self.paused = False


def _flash_override(counter: _Counter):
    """ComfyUI attention override on meta: an output of the right layout, connected to q without saving
    anything, and counted what flash / memory-efficient SDPA saves: q, k, v, output and a float32 logsumexp
    per head and query. (ComfyUI's CPU attention, sub-quadratic, cannot run on meta.)"""

    def override(func, q, k, v, heads, *args, **kwargs):
        if kwargs.get("skip_reshape"):
            b, h, n, d = q.shape
            q4 = q
        else:
            b, n, hd = q.shape
            h, d = heads, hd // heads
            q4 = q.view(b, n, h, d).transpose(1, 2)
        out = q4 * 1.0  # scalar multiply: nothing saved
        if not kwargs.get("skip_output_reshape"):
            out = out.transpose(1, 2).reshape(b, n, h * d)
        counter.add_flash([q, k, v, out, torch.empty(b, h, n, dtype=torch.float32, device=q.device)])  # + logsumexp
        return out

    return override


def build_meta(spec: tuple, weight_dtype: torch.dtype, compute_dtype: torch.dtype):
    """``spec`` = (config class, unet_config, cond) as in :data:`FULL`: the diffusion model of ComfyUI's class on
    the meta device, with ComfyUI's choice of operations for these dtypes (manual cast when they differ)."""
    import comfy.supported_models

    name, unet_config, _ = spec
    mc = getattr(comfy.supported_models, name)(dict(unet_config))
    mc.set_inference_dtype(weight_dtype, compute_dtype if compute_dtype != weight_dtype else None)
    with torch.device("meta"):
        base = mc.get_model({}, "", device=torch.device("meta"))
    return base


def model_inputs(spec: tuple, latent: tuple[int, int], res: int, device, dtype, batch: int = 1):
    """(x, t, context, kwargs) for one call of the diffusion model: latents of ``res`` px, a conditioning
    of the family's widths (zeros: memory does not depend on values)."""
    _, _, cond = spec
    ch, f = latent
    x = torch.zeros(batch, ch, res // f, res // f, device=device, dtype=dtype)
    t = torch.full((batch,), 500.0 if ch == 4 else 0.5, device=device, dtype=dtype)
    ctx = torch.zeros(batch, *cond["context"], device=device, dtype=dtype)
    kw = {}
    if cond.get("y"):
        kw["y"] = torch.zeros(batch, cond["y"], device=device, dtype=dtype)
    if "guidance" in cond:
        kw["guidance"] = torch.full((batch,), cond["guidance"], device=device, dtype=dtype)
    return x, t, ctx, kw


def call(dm, spec, x, t, ctx, kw, opts):
    if spec[0].startswith("SD"):  # UNet: forward(x, timesteps, context, y, ...)
        return dm(x, timesteps=t, context=ctx, transformer_options=opts, **kw)
    return dm(x, t, ctx, transformer_options=opts, **kw)  # DiT (Flux): forward(x, timestep, context, y, guidance)


def count(spec: tuple, latent: tuple[int, int], weight_dtype: torch.dtype, compute_dtype: torch.dtype, res: int,
          helpers, family: str = "", base=None, device="meta") -> Count:
    """One training forward (batch 1, grad on, steering hooks on every site of the default preset) of the
    model, counted. ``helpers`` = (choose_sites(dm), probe_widths(dm, sites, run), Steering, attach,
    checkpoint_units(dm), inputs_copied(dm, sites)) from the node pack, so the sites and blocks are the
    node's. ``base``/``device``: count a real model instead of a meta build (to check the meta count)."""
    choose, probe, steering_cls, attach, units_of, inputs_copied = helpers
    base = base if base is not None else build_meta(spec, weight_dtype, compute_dtype)
    dm = base.diffusion_model
    x, t, ctx, kw = model_inputs(spec, latent, res, device, compute_dtype)
    params = list(dm.parameters())
    counter = _Counter(params)
    opts = {"optimized_attention_override": _flash_override(counter)}
    sites = choose(dm)
    with counter.pause():
        specs = probe(dm, sites, lambda: call(dm, spec, x, t, ctx, kw, opts))
    with torch.device(device):
        steering = steering_cls(specs).to(compute_dtype)
    units = units_of(dm)
    hooks = []
    boundary: dict[int, int] = {}
    for u in units:
        def pre(_m, args, kwargs, u=u):
            counter.block = u
            for a in list(args) + list(kwargs.values()):
                if torch.is_tensor(a) and a.is_floating_point():
                    boundary[id(a)] = a.numel() * a.element_size()

        def post(_m, _a, _o):
            counter.block = None

        mod = dm.get_submodule(u)
        hooks += [mod.register_forward_pre_hook(pre, with_kwargs=True), mod.register_forward_hook(post)]
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda a: a):
            with attach(dm, steering), inputs_copied(dm, list(specs)):
                call(dm, spec, x, t, ctx, kw, opts)
    finally:
        for h in hooks:
            h.remove()
    W = sum(p.numel() * p.element_size() for p in params)
    return Count(family=family, weight_dtype=str(weight_dtype).replace("torch.", ""),
                 compute_dtype=str(compute_dtype).replace("torch.", ""), res=res,
                 params=sum(p.numel() for p in params), W=W, A=counter.A, C=counter.C, B=sum(boundary.values()),
                 A_blk=max(counter.A_blk.values(), default=0), C_blk=max(counter.C_blk.values(), default=0),
                 sites=len(specs), steering_params=steering.num_parameters(), blocks=len(units))


# -- validation of the count: one real training step, its peak RSS ------------------------------------------
def reduced_spec(family: str) -> tuple:
    """(config class, unet_config, cond) of the reduced UNet build of ``family`` (devtools.comfy_families), as
    :data:`FULL` gives the released ones."""
    from devtools.comfy_families import FAMILIES

    fam = FAMILIES[family]
    cfg = fam.config()
    if "adm_in_channels" not in cfg:
        raise ValueError(f"{family}: the memory check covers the UNet families (sd15, sdxl)")
    return fam.config_class, cfg, {"context": fam.context, "y": cfg["adm_in_channels"]}


def measure_step(family: str, res: int, helpers, folder, trainable_weights) -> dict:
    """Load the reduced build of ``family`` through ComfyUI's loader (fp32, CPU), then one training forward and
    backward as :func:`count` runs it (steering hooks on the default sites, input copies), with ComfyUI's own
    CPU attention. Returns the peak RSS over the step minus the RSS just before it (sampled every 2 ms), and
    the count of the same configuration on real tensors. Run it in a fresh process: RSS only shows memory
    the allocator had to ask for."""
    import threading

    import comfy.model_management as mm
    import psutil

    from devtools.comfy_families import FAMILIES, load_family

    fam = FAMILIES[family]
    spec = reduced_spec(family)
    loaded = load_family(fam, folder, weight_dtype="fp32")
    mm.load_models_gpu([loaded.model])
    base = loaded.model.model
    dm = base.diffusion_model
    choose, probe, steering_cls, attach, _units, inputs_copied = helpers
    x, t, ctx, kw = model_inputs(spec, LATENT[family], res, "cpu", torch.float32)
    with torch.no_grad():
        specs = probe(dm, choose(dm), lambda: call(dm, spec, x, t, ctx, kw, {}))
    steering = steering_cls(specs)
    proc = psutil.Process()
    peak = {"rss": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak["rss"] = max(peak["rss"], proc.memory_info().rss)
            done.wait(0.002)

    before = proc.memory_info().rss
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        with trainable_weights(dm), torch.enable_grad(), attach(dm, steering), inputs_copied(dm, list(specs)):
            out = call(dm, spec, x, t, ctx, kw, {})
            out.float().square().mean().backward()
    finally:
        done.set()
        watcher.join()
    return {"family": family, "res": res, "sites": len(specs), "rss_before": before,
            "step_peak_over_before": max(peak["rss"], proc.memory_info().rss) - before}


def main() -> None:
    """``python -m bench.comfy_memory [--family sdxl] [--res 256]``: :func:`measure_step` in this (fresh) process,
    printed as JSON (what ``python -m bench comfy`` reads)."""
    import argparse
    import json
    import sys
    import tempfile
    from pathlib import Path

    from devtools.comfy_runtime import InProcessComfy, families_dir

    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="sdxl")
    ap.add_argument("--res", type=int, default=256)
    a = ap.parse_args()
    InProcessComfy(Path(tempfile.mkdtemp(prefix="lineas-mem-")), tiny_checkpoint=False)
    pack = next(m for k, m in sys.modules.items() if k.endswith("comfyui-lineas") and hasattr(m, "comfy_entrypoint"))
    eng = sys.modules[pack.__name__ + ".lineas_engine"]
    api = pack.nodes.api
    helpers = (lambda dm: api.choose_sites(dm, "all norms", ""), api.probe_widths, eng.Steering, eng.attach,
               api.checkpoint_units, api.inputs_copied)
    with torch.inference_mode(False):
        print(json.dumps(measure_step(a.family, a.res, helpers, families_dir(), api.trainable_weights)))


if __name__ == "__main__":
    main()
