"""The distributional loss: per-coordinate 1-D squared Wasserstein distance (W2^2) between the pooled
source and target activations of each site.

For uniform empirical measures in 1-D the optimal coupling is monotone, so W2^2 is computed by sorting.
With n != m samples the quantile functions are step functions with breakpoints at i/n and j/m; between
consecutive breakpoints both are constant, and the indices involved do not depend on the values, so
the exact distance is a weighted sum of squared differences of sorted values (no subsampling).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Mapping

import torch

from .errors import LineasError

__all__ = ["wasserstein_1d_sq", "ot_loss", "quantile_pairs"]


def quantile_pairs(n: int, m: int, device: torch.device | str = "cpu"):
    """Indices (into sorted x, sorted y) and masses (float64) of the merged quantile intervals of U(n),
    U(m), on ``device`` (made once per (n, m, device), then cached)."""
    return _quantile_pairs_on(n, m, str(torch.device(device)))


@lru_cache(maxsize=128)
def _quantile_pairs_on(n: int, m: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if device != "cpu":
        return tuple(t.to(device) for t in _quantile_pairs_on(n, m, "cpu"))
    levels = sorted(set(range(m, n * m + 1, m)) | set(range(n, n * m + 1, n)))  # in units of 1/(n m)
    lv = torch.tensor(levels, dtype=torch.long)
    prev = torch.cat([torch.zeros(1, dtype=torch.long), lv[:-1]])
    mass = (lv - prev).double() / (n * m)
    ix = (lv + m - 1) // m - 1  # smallest i with i*m >= level, as a 0-based index
    iy = (lv + n - 1) // n - 1
    return ix, iy, mass


def wasserstein_1d_sq(x: torch.Tensor, y: torch.Tensor, method: str = "sort") -> torch.Tensor:
    """Exact squared 2-Wasserstein distance per column between the uniform empirical measures of the
    rows of ``x`` [n, d] and ``y`` [m, d]. Returns [d]; differentiable in both.

    ``method="pot"`` delegates to ``ot.wasserstein_1d(x, y, p=2)`` (POT's torch backend); ``"sort"`` (the
    default) is the closed form above, which is the same number and a little faster.
    """
    if x.dim() == 1:
        x = x[:, None]
    if y.dim() == 1:
        y = y[:, None]
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise LineasError(f"expected [n, d] and [m, d] with the same d, got {tuple(x.shape)} and {tuple(y.shape)}")
    n, m = x.shape[0], y.shape[0]
    if n == 0 or m == 0:
        raise LineasError(f"need at least one sample on each side, got n={n}, m={m}")
    y = y.to(x.dtype)
    if method == "pot":
        import ot  # POT; imported here to keep `import lineas_engine` light

        return ot.wasserstein_1d(x, y, p=2)
    if method != "sort":
        raise LineasError(f"method must be 'sort' or 'pot', got {method!r}")
    xs = torch.sort(x, dim=0).values
    ys = torch.sort(y, dim=0).values
    if n == m:
        return (xs - ys).pow(2).mean(dim=0)
    ix, iy, mass = quantile_pairs(n, m, x.device)
    diff = xs.index_select(0, ix) - ys.index_select(0, iy)
    return (diff.pow(2) * mass.to(device=x.device, dtype=x.dtype)[:, None]).sum(dim=0)


def ot_loss(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    reduction: str = "mean",
) -> torch.Tensor:
    """Sum over sites of the per-coordinate W2^2 between ``source[site]`` [n, d] and ``target[site]`` [m, d].

    ``reduction="mean"`` averages over coordinates and then over sites (the released code; a constant
    rescaling); ``"sum"`` sums both (the paper's formula). Computed in fp32 with one sort over all sites
    (:mod:`~lineas_engine.packed_loss`), on the device of the first source site.
    """
    from .packed_loss import SortedTarget, packed_ot_loss

    sites = list(source)
    if not sites:
        raise LineasError("ot_loss needs at least one site")
    device = source[sites[0]].device
    return packed_ot_loss(source, SortedTarget(target, sites, None, reduction, device))
