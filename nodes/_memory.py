"""Memory for training inside ComfyUI: a trainable clone without a second copy of the weights, loading
with a real reserve, the micro-batch from free memory, and per-block gradient checkpointing.

- Weights. ComfyUI's loaders create the weights under inference mode, and autograd refuses to save
  inference tensors for backward. Instead of a weight wrapper per layer (ComfyUI then casts a fresh copy of
  every weight per forward, ops.cast_bias_weight, and autograd keeps all those copies: a second copy of
  the model), :func:`trainable_weights` gives each inference parameter of the loaded diffusion model a
  normal tensor that ALIASES the same storage (no copy), for the duration of training only, and puts the
  original tensors back afterwards (also on error or interrupt). Values never change.
- Loading. :func:`load_for_training` asks ``load_models_gpu`` for the model plus a reserve for training
  (ComfyUI then unloads text encoders / VAEs to make room); a model that still loads only partially
  (lowvram) trains with gradient checkpointing or stops with a clear error.
- Micro-batch. :func:`saved_bytes_per_sample` counts what autograd saves for backward in a one-sample
  forward (torch saved-tensor hooks; the same count the benchmark extrapolates); :func:`choose_micro_batch`
  fits that into the free memory.
- Checkpointing. :func:`add_checkpointing` object-patches (on the clone, restored by ComfyUI's unpatch) the
  ``forward`` of each block with ``torch.utils.checkpoint`` (non-reentrant). The engine's forward hooks of
  the block's modules are re-installed for the recompute pass under ``lineas_engine.recomputing()``,
  so the steering acts there too and recorders do not record twice.
"""

from __future__ import annotations

import contextlib
import logging
from contextvars import ContextVar
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..lineas_engine import LineasError, recomputing
from ._compat import free_memory, is_dynamic, is_quantized

__all__ = ["CHECKPOINTING", "prepare_training", "auto_micro_batch", "training_bytes_per_sample", "add_checkpointing",
           "checkpoint_units", "load_for_training", "check_loaded", "trainable_weights", "training_clone",
           "casts_weights_per_forward", "saved_bytes", "weight_storages", "saved_bytes_per_sample",
           "choose_micro_batch"]

logger = logging.getLogger(__name__)
CHECKPOINTING = {"auto": "on when weights are cast per forward (fp8 / manual cast) or the model loads partially",
                 "on": "recompute each block in backward: least memory, about one extra forward per step",
                 "off": "fastest; needs memory for every block's activations"}
RESERVE_FRACTION = 0.25  # of the device's total memory, kept free for training when loading
FREE_FRACTION = 0.7  # of the free memory given to saved activations (the rest: transient buffers, optimizer)


# -- the two calls the training node makes -------------------------------------------------------------
def prepare_training(patcher, checkpointing: str = "auto") -> bool:
    """Prepare ``patcher`` (a clone of the input MODEL, already given any compute dtype) for training and
    load it with a training reserve; returns whether gradient checkpointing is on. ``checkpointing`` is one
    of :data:`CHECKPOINTING`; "auto" turns it on when ComfyUI casts the weights per forward (fp8 and other
    manual-cast weights, a forced compute dtype) or the model loads only partially."""
    if checkpointing not in CHECKPOINTING:
        raise LineasError(f"gradient_checkpointing must be one of {list(CHECKPOINTING)}, got {checkpointing!r}")
    dm = patcher.get_model_object("diffusion_model")
    if checkpointing == "on":
        add_checkpointing(patcher)
    load_for_training(patcher)  # "auto" is decided on the loaded model: how ComfyUI placed and casts its weights
    on = checkpointing == "on"
    if checkpointing == "auto" and (patcher.force_cast_weights or casts_weights_per_forward(dm)
                                    or getattr(patcher.model, "model_lowvram", False)):
        logger.info("weights are cast per forward or loaded partially: training with gradient checkpointing")
        add_checkpointing(patcher)
        load_for_training(patcher)  # ComfyUI re-applies the object patches on load
        on = True
    check_loaded(patcher, on)
    return on


def training_clone(model):
    """The clone the training node trains on. Under Dynamic VRAM the forward reads weight views that ComfyUI
    makes on demand (possibly under inference mode, in an earlier sampling of the same graph), which no
    parameter swap can reach; as ComfyUI's own trainer does (comfy_extras/nodes_train.py), such a model is
    trained on a fresh, non-dynamic copy loaded again by its loader outside inference mode
    (``clone(force_deepcopy=True)``; costs one more load of the weights, in RAM, for the training run).
    Quantized weights (``QuantizedTensor``) take the same route: loading them outside inference mode replaces
    the shared model's parameters, which its next sampling under inference mode cannot move. Other models
    train on a plain clone (see :func:`trainable_weights`)."""
    dynamic = is_dynamic(model)
    reloadable = getattr(model, "cached_patcher_init", None) is not None  # trees without it: no QuantizedTensor
    quantized = any(is_quantized(p) for p in model.get_model_object("diffusion_model").parameters())
    if not dynamic and not (quantized and reloadable):
        return model.clone()
    if not reloadable:
        raise LineasError(
            "this MODEL runs under Dynamic VRAM and was not made by a core loader (no cached_patcher_init), so "
            "it cannot be reloaded for training; load it with UNETLoader / CheckpointLoaderSimple, or start "
            "ComfyUI with --disable-dynamic-vram")
    logger.info("%s model: training on a fresh copy loaded outside inference mode",
                "Dynamic VRAM" if dynamic else "quantized")
    with torch.inference_mode(False):
        return model.clone(force_deepcopy=True)


def training_bytes_per_sample(dm: nn.Module, steering, forward: Callable[[Any], Any], samples: dict) -> int:
    """Bytes one training sample keeps for backward, measured with one forward of one sample (steering
    attached): everything autograd saves, or with checkpointing the blocks' inputs plus the largest block's
    recompute (each checkpointed block runs once with its graph, which is then dropped)."""
    from ..lineas_engine import attach, slice_samples

    stats = {"inputs": {}, "B": 0, "A_blk": 0, "resident": weight_storages(dm)}
    token = _measuring.set(stats)
    try:
        with attach(dm, steering):
            per = saved_bytes_per_sample(forward, slice_samples(samples, slice(0, 1)), dm)
    finally:
        _measuring.reset(token)
    return per + stats["B"] + stats["A_blk"]


def auto_micro_batch(dm: nn.Module, steering, forward: Callable[[Any], Any], samples: dict, batch_size: int,
                     device, patcher=None) -> int | None:
    """The micro-batch for ``batch_size`` from the free memory of ``device`` (the patcher's own count where
    ComfyUI offers one) and :func:`training_bytes_per_sample`; None = the whole batch in one pass."""
    per = training_bytes_per_sample(dm, steering, forward, samples)
    free = free_memory(patcher, device)
    micro = choose_micro_batch(per, free, batch_size)
    logger.info("one sample keeps %.1f MiB for backward, %.1f GiB free on %s: micro-batch %s", per / 2**20,
                free / 2**30, device, micro or f"off (batch {batch_size} fits)")
    return micro


# -- checkpointing -----------------------------------------------------------------------------------------
def checkpoint_units(dm: nn.Module) -> list[str]:
    """Module names (relative to the diffusion model) of its blocks: the elements of its top-level module
    lists (Flux double/single blocks, DiT blocks, UNet input/output blocks) and of its top-level
    sequential containers; a sequential block (UNet's TimestepEmbedSequential, whose layers ComfyUI calls
    one by one) is split into its layers. Layers without parameters are skipped."""
    units: list[str] = []

    def expand(name: str, block: nn.Module) -> None:
        if isinstance(block, nn.Sequential):
            units.extend(f"{name}.{k}" for k, layer in block.named_children() if _has_params(layer))
        elif _has_params(block):
            units.append(name)

    for name, child in dm.named_children():
        if isinstance(child, nn.ModuleList):
            for k, block in child.named_children():
                expand(f"{name}.{k}", block)
        elif isinstance(child, nn.Sequential) and any(isinstance(c, nn.Module) and _has_params(c)
                                                      for c in child.children()) and len(child) > 1:
            expand(name, child)
    return units


def _has_params(m: nn.Module) -> bool:
    return next(m.parameters(), None) is not None


def add_checkpointing(patcher) -> list[str]:
    """Object patches on ``patcher`` (a clone) that run each block under non-reentrant checkpointing."""
    dm = patcher.get_model_object("diffusion_model")
    units = checkpoint_units(dm)
    for name in units:
        block = dm.get_submodule(name)
        patcher.add_object_patch(f"diffusion_model.{name}.forward", _checkpointed(block, block.forward))
    logger.debug("gradient checkpointing on %d blocks", len(units))
    return units


_measuring: ContextVar[dict | None] = ContextVar("lineas_checkpoint_measuring", default=None)


def _checkpointed(block: nn.Module, forward: Callable) -> Callable:
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        stats = _measuring.get()
        if stats is not None:  # one block at a time with its graph, then dropped (see auto_micro_batch)
            return _measure_block(stats, forward, args, kwargs)
        live = _hooks_inside(block)  # the engine's hooks now; removed again before backward recomputes

        def contexts():
            return contextlib.nullcontext(), _replay(live)

        return checkpoint(_on_copies, *args, use_reentrant=False, context_fn=contexts, **kwargs)

    def _on_copies(*args: Any, **kwargs: Any) -> Any:
        # DiT blocks update their input in place (Flux ``x += ...``); checkpointing keeps the input for the
        # recompute, so the block gets a copy (in both passes) and the kept input stays as it was
        return forward(*(_fresh(a) for a in args), **{k: _fresh(v) for k, v in kwargs.items()})

    return run


def _fresh(a):
    return a.clone() if torch.is_tensor(a) and a.is_floating_point() else a


def _measure_block(stats: dict, forward: Callable, args, kwargs):
    """What checkpointing keeps of this block (its tensor inputs, counted once over all blocks) and what
    its recompute saves (the largest block counts); the output leaves the block's graph behind."""
    for a in list(args) + list(kwargs.values()):
        if torch.is_tensor(a) and a.is_floating_point() and id(a) not in stats["inputs"]:
            stats["inputs"][id(a)] = a
            stats["B"] += a.numel() * a.element_size()
    with saved_bytes(stats["resident"]) as n:
        out = forward(*args, **kwargs)
    stats["A_blk"] = max(stats["A_blk"], n["bytes"])

    def cut(t):
        return t.detach().requires_grad_(t.requires_grad) if torch.is_tensor(t) else t

    return tuple(cut(t) for t in out) if isinstance(out, tuple) else cut(out)


def _hooks_inside(block: nn.Module) -> list[tuple[nn.Module, list, list]]:
    """(module, forward pre-hooks, forward hooks) of the block's modules that have any, at this moment."""
    return [(m, list(m._forward_pre_hooks.values()), list(m._forward_hooks.values())) for m in block.modules()
            if m is not block and (m._forward_hooks or m._forward_pre_hooks)]


@contextlib.contextmanager
def _replay(live):
    """During the recompute pass: the hooks that were live in the first pass (the steering, the recorder,
    the input copies of DiT sites), each once."""
    handles = []
    try:
        for module, pre, post in live:
            have_pre = set(map(id, module._forward_pre_hooks.values()))
            have_post = set(map(id, module._forward_hooks.values()))
            handles += [module.register_forward_pre_hook(fn) for fn in pre if id(fn) not in have_pre]
            handles += [module.register_forward_hook(fn) for fn in post if id(fn) not in have_post]
        with recomputing():
            yield
    finally:
        for h in handles:
            h.remove()


# -- loading -------------------------------------------------------------------------------------------
def load_for_training(patcher, reserve_bytes: int | None = None):
    """``load_models_gpu`` with a training reserve (default: a quarter of the device's memory). On the CPU
    the reserve has no effect (ComfyUI loads fully)."""
    import comfy.model_management as mm

    device = patcher.load_device
    if reserve_bytes is None:
        reserve_bytes = 0 if device.type == "cpu" else int(mm.get_total_memory(device) * RESERVE_FRACTION)
    mm.load_models_gpu([patcher], memory_required=reserve_bytes)
    return reserve_bytes


def check_loaded(patcher, checkpointing: bool) -> None:
    """A partially loaded (lowvram) model casts the offloaded weights to the device per forward; autograd
    would keep every copy, so it trains only with checkpointing."""
    if getattr(patcher.model, "model_lowvram", False) and not checkpointing:
        loaded, total = patcher.loaded_size(), patcher.model_size()
        raise LineasError(
            f"the model is only partially loaded ({loaded / 2**30:.1f} of {total / 2**30:.1f} GiB on "
            f"{patcher.load_device}); training it needs gradient_checkpointing 'on' or 'auto' (the offloaded "
            "weights are then copied in per block, not kept), or free memory: close other models, load the "
            "weights in fp8, or lower the resolution")


def casts_weights_per_forward(dm: nn.Module) -> bool:
    """True when ComfyUI casts weights in every forward (fp8 or other manual-cast weights, offloaded
    layers, weight functions): autograd would then keep a cast copy of every weight until backward."""
    return any(getattr(m, "comfy_cast_weights", False) or getattr(m, "weight_function", None)
               for m in dm.modules())


@contextlib.contextmanager
def trainable_weights(dm: nn.Module):
    """Inference-mode parameters and buffers of ``dm`` replaced by normal tensors that alias the same
    storage (no copy) for the duration; the original tensors are put back afterwards."""
    swapped: list[tuple[dict, str, Any]] = []
    try:
        with torch.inference_mode(False):
            for module in dm.modules():
                for store in (module._parameters, module._buffers):
                    for name, t in list(store.items()):
                        if t is None or is_quantized(t) or not t.is_inference():
                            # quantized weights (QuantizedTensor, no plain storage) are dequantized by
                            # ComfyUI per forward into fresh tensors: nothing of theirs is saved for backward
                            continue
                        alias = torch.empty(0, dtype=t.dtype, device=t.device).set_(
                            t.untyped_storage(), t.storage_offset(), t.shape, t.stride())
                        store[name] = nn.Parameter(alias, requires_grad=False) if store is module._parameters \
                            else alias
                        swapped.append((store, name, t))
        yield len(swapped)
    finally:
        for store, name, t in reversed(swapped):
            store[name] = t


# -- micro-batch ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def saved_bytes(resident: set[int] | None = None):
    """Counts what autograd saves for backward inside the block, each storage once and without the
    storages in ``resident`` (e.g. the model's weights, saved as they are: no new memory):
    ``with saved_bytes(ptrs) as n: ...``, then ``n["bytes"]``. On the meta device every saved tensor
    counts by its size (meta tensors have no storage address)."""
    seen: set[int] = set(resident or ())
    out = {"bytes": 0, "tensors": 0}

    def pack(t: torch.Tensor):
        out["tensors"] += 1
        if t.device.type == "meta":
            out["bytes"] += t.numel() * t.element_size()
            return t
        if is_quantized(t):  # a quantized weight (no plain storage): resident, not new memory
            return t
        st = t.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            out["bytes"] += st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield out


def weight_storages(root: nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in list(root.parameters()) + list(root.buffers())
            if t.device.type != "meta" and not is_quantized(t)}


def saved_bytes_per_sample(forward: Callable[[Any], Any], one_sample: Any, root: nn.Module) -> int:
    """Bytes autograd saves for backward in ``forward(one_sample)`` (grad enabled, output dropped), not
    counting ``root``'s own weights."""
    with torch.enable_grad(), saved_bytes(weight_storages(root)) as n:
        forward(one_sample)
    return int(n["bytes"])


def choose_micro_batch(per_sample_bytes: int, free_bytes: int, batch_size: int) -> int | None:
    """The largest micro-batch whose saved activations fit in ``FREE_FRACTION`` of the free memory; None
    when the whole batch fits (one pass, no recompute). Raises when not even one sample fits."""
    budget = int(free_bytes * FREE_FRACTION)
    if per_sample_bytes <= 0 or per_sample_bytes * batch_size <= budget:
        return None
    m = budget // per_sample_bytes
    if m < 1:
        raise LineasError(
            f"one training sample needs {per_sample_bytes / 2**30:.2f} GiB for backward but only "
            f"{free_bytes / 2**30:.2f} GiB are free; turn gradient_checkpointing on, lower the resolution, "
            "or free memory (close other models)")
    return int(m)
