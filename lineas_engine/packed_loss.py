"""The OT loss over every site and group at once: the same number as :func:`~lineas_engine.losses.ot_loss`
per group, computed with one sort per group over all sites instead of one per site.

Sites are packed side by side into one [N, D] matrix (D = the sum of the site widths, fp32); the
per-coordinate W2^2 of the packed matrices is the per-site W2^2 of every site, and the reduction is a
weighted sum of coordinates (``1 / (sites * width)`` per coordinate for ``"mean"``, 1 for ``"sum"``).
The target side does not change during training, so :class:`SortedTarget` packs, groups and sorts it
once; a training step then sorts only the source. Group indices are worked out on the CPU (the group
labels live there) and moved to the device once per call; nothing in a step waits for the device.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from .errors import LineasError
from .losses import quantile_pairs

__all__ = ["SortedTarget", "packed_ot_loss"]


def _pack(acts: Mapping[str, torch.Tensor], sites: Sequence[str], device: torch.device) -> torch.Tensor:
    """[N, D] fp32 on ``device``: the sites' [N, d] activations side by side."""
    return torch.cat([acts[s].to(device=device, dtype=torch.float32) for s in sites], dim=1)


def _coordinate_weights(widths: Sequence[int], reduction: str, device: torch.device) -> torch.Tensor | None:
    """Per packed coordinate: ``1 / (sites * width)`` for "mean" (mean over coordinates, then sites); None
    for "sum"."""
    if reduction == "sum":
        return None
    return torch.cat([torch.full((d,), 1.0 / (len(widths) * d)) for d in widths]).to(device)


def _by_group(packed: torch.Tensor, groups: torch.Tensor | None) -> tuple[list[int], list[torch.Tensor]]:
    """Group labels (ascending) and the rows of ``packed`` of each group: one index copy to the device
    (the labels are on the CPU), then views."""
    if groups is None:
        return [0], [packed]
    g = groups.detach().cpu()
    if g.shape[0] != packed.shape[0]:
        raise LineasError(f"{g.shape[0]} group labels for {packed.shape[0]} samples")
    labels, counts = torch.unique(g, return_counts=True)
    order = torch.argsort(g, stable=True).to(packed.device)
    return labels.tolist(), list(torch.split(packed.index_select(0, order), counts.tolist()))


def _sorted_stack(parts: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """Each part sorted along samples: one sort of a [G, n, D] stack when the groups are the same size."""
    if len({p.shape[0] for p in parts}) == 1:
        return torch.sort(torch.stack(parts), dim=1).values
    return [torch.sort(p, dim=0).values for p in parts]


class SortedTarget:
    """Target activations packed over ``sites``, split by group and sorted along samples, on ``device``.
    Build it once per training run (:meth:`matches` tells whether a cached one still fits a call)."""

    def __init__(self, acts: Mapping[str, torch.Tensor], sites: Sequence[str], groups: torch.Tensor | None,
                 reduction: str, device: torch.device | str):
        if reduction not in ("mean", "sum"):
            raise LineasError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        missing = [s for s in sites if s not in acts]
        if missing:
            raise LineasError(f"target activations lack sites {missing[:5]}; record the target at the same sites")
        if not sites:
            raise LineasError("the OT loss needs at least one site")
        self.sites, self.reduction, self.device = tuple(sites), reduction, torch.device(device)
        self.widths = tuple(int(acts[s].shape[1]) for s in sites)
        packed = _pack(acts, sites, self.device)
        if packed.shape[0] == 0:
            raise LineasError("need at least one target sample")
        self.grouped = groups is not None
        labels, parts = _by_group(packed, groups)
        self.labels = {label: k for k, label in enumerate(labels)}
        self.sizes = [p.shape[0] for p in parts]
        self.sorted = _sorted_stack(parts)
        self.weights = _coordinate_weights(self.widths, reduction, self.device)
        self._pick: dict[tuple[int, ...], torch.Tensor] = {}

    def matches(self, sites: Sequence[str], grouped: bool, reduction: str, device) -> bool:
        return (self.sites == tuple(sites) and self.grouped == grouped and self.reduction == reduction
                and self.device == torch.device(device))

    def for_labels(self, labels: list[int]) -> torch.Tensor | list[torch.Tensor]:
        """The sorted target of each of ``labels`` (a [G, m, D] stack when the target's groups are equal)."""
        unknown = [g for g in labels if g not in self.labels]
        if unknown:
            raise LineasError(f"group {unknown[0]} has source samples but no target samples")
        idx = [self.labels[g] for g in labels]
        if isinstance(self.sorted, list):
            return [self.sorted[k] for k in idx]
        if idx == list(range(len(self.labels))):
            return self.sorted
        key = tuple(idx)
        if key not in self._pick:
            self._pick[key] = torch.tensor(idx, device=self.device)
        return self.sorted.index_select(0, self._pick[key])


def _w2_per_coordinate(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Per-coordinate W2^2 between sorted samples along dim -2 ([..., n, D] and [..., m, D]) -> [..., D]."""
    n, m = xs.shape[-2], ys.shape[-2]
    if n == m:
        return (xs - ys).pow(2).mean(dim=-2)
    ix, iy, mass = quantile_pairs(n, m, xs.device)
    diff = xs.index_select(-2, ix) - ys.index_select(-2, iy)
    return (diff.pow(2) * mass.to(diff.dtype)[:, None]).sum(dim=-2)


def packed_ot_loss(source: Mapping[str, torch.Tensor], target: SortedTarget,
                   groups: torch.Tensor | None = None) -> torch.Tensor:
    """The mean over the source's groups of the OT loss (summed or averaged over sites and coordinates as
    ``target.reduction`` says) between ``source`` [n, d] per site and the target's samples of the same group.
    Differentiable in ``source``; a scalar on ``target.device``."""
    if groups is None and target.grouped:
        raise LineasError("the target was recorded with groups but the source has none")
    if groups is not None and not target.grouped:
        raise LineasError("the source has groups but the target was recorded without")
    missing = [s for s in target.sites if s not in source]
    widths = tuple(int(source[s].shape[1]) for s in target.sites if s in source)
    if missing or widths != target.widths:
        raise LineasError(f"source activations do not match the target's sites / widths (missing {missing[:5]})")
    labels, parts = _by_group(_pack(source, target.sites, target.device), groups)
    xs = _sorted_stack(parts)
    ys = target.for_labels(labels)
    if torch.is_tensor(xs) and torch.is_tensor(ys):
        per = _w2_per_coordinate(xs, ys)  # [G, D]
    else:
        per = torch.stack([_w2_per_coordinate(x, y) for x, y in zip(xs, ys)])
    per_group = per.sum(dim=1) if target.weights is None else (per * target.weights).sum(dim=1)
    return per_group.mean()
