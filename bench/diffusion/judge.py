"""A small photo-vs-illustration judge for 64 px images: hand-made colour / saturation / edge / flatness
/ histogram features, standardised, and an L2 logistic regression (class-balanced, fitted with L-BFGS in
float64). Stored as safetensors (tensors + a JSON description in the metadata), never pickled."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.diffusion.checkpoint import read_meta, save_atomic

log = logging.getLogger(__name__)

FEATURES = (
    "r_mean", "g_mean", "b_mean", "r_std", "g_std", "b_std",
    "sat_mean", "sat_std", "sat_p10", "sat_p50", "sat_p90", "val_mean", "val_std",
    "grad_mean", "grad_std", "grad_p50", "grad_p90", "flat_frac", "edge_frac", "edge_contrast",
    "lap_mean", "lum_entropy", "colour_entropy", "hue_entropy", "white_frac", "black_frac",
)


def _entropy(hist: torch.Tensor) -> torch.Tensor:
    p = hist / hist.sum(dim=-1, keepdim=True).clamp(min=1e-12)
    return -(p * p.clamp(min=1e-12).log()).sum(dim=-1)


def _hist(values: torch.Tensor, bins: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row histogram of values in [0, 1): [N, P] -> [N, bins]."""
    idx = (values.clamp(0, 1 - 1e-6) * bins).long()
    w = torch.ones_like(values, dtype=torch.float64) if weights is None else weights.double()
    return torch.zeros(values.shape[0], bins, dtype=torch.float64).scatter_add_(1, idx, w)


def features(x: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in 0..1 -> [N, len(FEATURES)] float64."""
    x = x.double().clamp(0, 1)
    n = x.shape[0]
    flat = x.reshape(n, 3, -1)
    mx, mn = flat.max(dim=1).values, flat.min(dim=1).values
    sat = (mx - mn) / mx.clamp(min=1e-6)
    val = mx
    lum = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    gx, gy = lum[:, :, 1:] - lum[:, :, :-1], lum[:, 1:, :] - lum[:, :-1, :]
    grad = (gx[:, :-1, :] ** 2 + gy[:, :, :-1] ** 2).sqrt().reshape(n, -1)
    lap = (4 * lum[:, 1:-1, 1:-1] - lum[:, :-2, 1:-1] - lum[:, 2:, 1:-1] - lum[:, 1:-1, :-2] - lum[:, 1:-1, 2:]).abs()
    strong, weak = (grad > 0.15).double(), ((grad > 0.02) & (grad <= 0.15)).double()
    q = (flat * 7.999).long()  # 8 levels per channel -> 512 colours
    colour = _hist((q[:, 0] * 64 + q[:, 1] * 8 + q[:, 2]).double() / 512, 512)
    r, g, b = flat[:, 0], flat[:, 1], flat[:, 2]
    hue = torch.atan2(3**0.5 * (g - b), 2 * r - g - b) / (2 * torch.pi) % 1.0
    qs = torch.quantile(sat, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64), dim=1)
    qg = torch.quantile(grad, torch.tensor([0.5, 0.9], dtype=torch.float64), dim=1)
    cols = [
        *flat.mean(dim=2).T, *flat.std(dim=2).T,
        sat.mean(1), sat.std(1), qs[0], qs[1], qs[2], val.mean(1), val.std(1),
        grad.mean(1), grad.std(1), qg[0], qg[1], (grad < 0.01).double().mean(1), strong.mean(1),
        strong.mean(1) / (weak.mean(1) + 1e-3),
        lap.reshape(n, -1).mean(1), _entropy(_hist(lum.reshape(n, -1), 32)), _entropy(colour),
        _entropy(_hist(hue, 18, weights=sat)), (mn > 0.92).double().mean(1), (mx < 0.08).double().mean(1),
    ]
    return torch.stack(cols, dim=1)


@dataclass
class Judge:
    """p(illustration) = sigmoid(((features - mean) / std) @ w + b)."""

    mean: torch.Tensor
    std: torch.Tensor
    w: torch.Tensor
    b: torch.Tensor

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((features(x) - self.mean) / self.std) @ self.w + self.b

    def prob_illustration(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x)).float()

    def prob_illustration_uint8(self, images) -> torch.Tensor:
        """p(illustration) of images as saved and read back: [N, H, W, 3] uint8 (numpy)."""
        return self.prob_illustration(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        if x.shape[0] == 0:
            return {"n": 0}
        pred = (self.logits(x) > 0).long()
        per_class = [(pred[y == c] == c).double().mean().item() for c in (0, 1) if (y == c).any()]
        return {"n": int(x.shape[0]), "accuracy": round((pred == y).double().mean().item(), 4),
                "balanced_accuracy": round(sum(per_class) / len(per_class), 4)}

    def save(self, path: Path, meta: dict | None = None) -> Path:
        tensors = {"mean": self.mean, "std": self.std, "w": self.w, "b": self.b.reshape(1)}
        return save_atomic(path, {k: v.double().contiguous() for k, v in tensors.items()},
                           {"features": list(FEATURES), "model": "logistic regression on standardised features",
                            "positive_class": "illustration", **(meta or {})})

    @classmethod
    def load(cls, path: Path) -> Judge:
        from safetensors.torch import load_file

        t = load_file(str(path))
        names = read_meta(path).get("features")
        if names != list(FEATURES):
            raise ValueError(f"{path}: judge features {names} differ from this code's {list(FEATURES)}")
        return cls(t["mean"], t["std"], t["w"], t["b"][0])


def fit(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2, iters: int = 200) -> Judge:
    """Class-balanced L2 logistic regression; deterministic."""
    f = features(x)
    mean, std = f.mean(0), f.std(0).clamp(min=1e-6)
    z = (f - mean) / std
    yd = y.double()
    pos = yd.mean().clamp(1e-3, 1 - 1e-3)
    sw = torch.where(y == 1, 0.5 / pos, 0.5 / (1 - pos))
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=iters, tolerance_grad=1e-10, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (sw * torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, yd, reduction="none")).mean()
        loss = loss + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return Judge(mean, std, w.detach(), b.detach())
