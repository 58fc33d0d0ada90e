"""Pooled activations of a model at its sites (recorded by the engine's hooks), and the OT loss between
recorded source and target activations, per group."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from .config import Forward, TrainConfig
from .errors import LineasError
from .hooks import Recorder, attach, run_until_sites
from .packed_loss import SortedTarget, packed_ot_loss
from .samples import num_samples, sample_groups, slice_samples
from .sites import SiteSpec
from .steering import Steering

__all__ = ["frozen", "forward_recorded", "record_activations", "grouped_loss", "evaluate_loss"]


@contextlib.contextmanager
def frozen(root: nn.Module) -> Iterator[None]:
    """Eval mode and no weight gradients for the duration; the previous state is restored after."""
    flags = [(p, p.requires_grad) for p in root.parameters()]
    was_training = root.training
    try:
        for p, _ in flags:
            if p.requires_grad:
                p.requires_grad_(False)
        root.eval()
        yield
    finally:
        for p, flag in flags:
            if p.requires_grad != flag:
                # inference tensors (e.g. weights a host loaded under inference_mode) only take the flag back there
                with torch.inference_mode() if p.is_inference() else contextlib.nullcontext():
                    p.requires_grad_(flag)
        root.train(was_training)


def forward_recorded(root: nn.Module, specs: Mapping[str, SiteSpec], forward: Forward, batch: Mapping[str, Any], *,
                     steering: Steering | None = None, strength: float = 1.0, mask_key: str | None = None,
                     stop_after: str | None = None, detach: bool = False) -> tuple[dict[str, torch.Tensor], list[str]]:
    """One forward of ``batch`` with the steering applied; returns the pooled activations [n, d] per site
    and the order in which the sites fired. ``stop_after`` ends the forward after that site."""
    rec = Recorder(specs, mask=batch.get(mask_key) if mask_key else None, detach=detach)
    with attach(root, steering, strength, recorder=rec, stop_after=stop_after):
        run_until_sites(forward, batch)
    return rec.take(), rec.order


def record_activations(
    root: nn.Module,
    specs: Mapping[str, SiteSpec],
    forward: Forward,
    inputs: Mapping[str, Any],
    *,
    steering: Steering | None = None,
    strength: float = 1.0,
    batch_size: int = 32,
    mask_key: str | None = "attention_mask",
    stop_after_last: bool = True,
    return_last_site: bool = False,
):
    """Pooled activations [N, d] at each site (after the steering, if given), without gradients.
    The forward stops after the last site once the firing order is known. ``return_last_site=True``
    returns ``(activations, last site to fire)`` (where later forwards may stop)."""
    n = num_samples(inputs)
    chunks: dict[str, list[torch.Tensor]] = {s: [] for s in specs}
    stop = None
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = slice_samples(inputs, slice(start, start + batch_size))
            acts, order = forward_recorded(root, specs, forward, batch, steering=steering, strength=strength,
                                           mask_key=mask_key, stop_after=stop, detach=True)
            if stop_after_last and stop is None:
                stop = order[-1]
            for s, v in acts.items():
                chunks[s].append(v)
    acts = {s: torch.cat(v) for s, v in chunks.items()}
    return (acts, stop) if return_last_site else acts


def grouped_loss(src: Mapping[str, torch.Tensor], tgt: Mapping[str, torch.Tensor] | SortedTarget,
                 src_groups: torch.Tensor | None, tgt_groups: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """:func:`ot_loss`, or its mean over groups (e.g. noise levels) compared separately. ``tgt`` may be a
    :class:`SortedTarget` made once for many calls (then ``tgt_groups`` is not read)."""
    if not isinstance(tgt, SortedTarget):
        sites = list(src)
        if not sites:
            raise LineasError("the OT loss needs at least one site")
        if src_groups is None or tgt_groups is None:
            src_groups = tgt_groups = None
        tgt = SortedTarget(tgt, sites, tgt_groups, reduction, src[sites[0]].device)
    elif src_groups is not None and not tgt.grouped:
        src_groups = None
    return packed_ot_loss(src, tgt, src_groups)


def evaluate_loss(root, steering, forward, source, target_acts, *, specs: Mapping[str, SiteSpec] | None = None,
                  config: TrainConfig | None = None, strength: float = 1.0,
                  target_groups: torch.Tensor | None = None) -> float:
    """Loss of the steering (at ``strength``; ``steering=None`` and ``specs`` for the unsteered model)
    on ``source`` against cached ``target_acts`` (with their ``target_groups``, if any)."""
    cfg = config or TrainConfig()
    if specs is None:
        if steering is None:
            raise LineasError("evaluate_loss needs the site specs when no steering is given")
        specs = steering.specs
    acts = record_activations(root, specs, forward, source, steering=steering, strength=strength,
                              batch_size=cfg.recording_batch_size, mask_key=cfg.mask_key,
                              stop_after_last=cfg.stop_after_last_site)
    return float(grouped_loss(acts, {s: target_acts[s] for s in acts}, sample_groups(source, cfg.group_key),
                              target_groups, cfg.reduction))
