"""End-to-end training of a steering with the distributional loss (nanoGPT-minimal loop).

Inputs are "sample dicts": tensors with a leading sample axis N (other values are passed through),
sliced into mini-batches and handed to the host's ``forward(batch)``. The engine never moves data; the
host's forward does.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from .errors import LineasError, NonFiniteLossError
from .hooks import Recorder, attach, run_until_sites
from .losses import ot_loss
from .optim import cosine_schedule, make_optimizer, prox_sparse_group_lasso_
from .sites import SiteSpec
from .steering import Steering

__all__ = [
    "TrainConfig",
    "TrainResult",
    "fit",
    "record_activations",
    "evaluate_loss",
    "grouped_loss",
    "num_samples",
    "slice_samples",
    "frozen",
]

logger = logging.getLogger(__name__)
Forward = Callable[[Mapping[str, Any]], Any]
OnStep = Callable[[int, float], None]


@dataclass
class TrainConfig:
    """Settings of :func:`fit`. Defaults are the paper's LLM setting (SGD 0.1, cosine, 1000 steps, batch 32).

    ``patience > 0`` stops early once the training loss has not improved by a relative ``min_delta`` over
    its best value for ``patience`` consecutive steps (``steps`` stays the schedule's horizon)."""

    steps: int = 1000
    lr: float = 0.1
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup: int = 0
    batch_size: int = 32
    micro_batch_size: int | None = None
    gamma: float = 0.0
    l1: float = 1.0
    group: float = 1.0
    seed: int = 0
    reduction: str = "mean"
    mask_key: str = "attention_mask"
    group_key: str = "lineas_group"
    stop_after_last_site: bool = True
    record_batch_size: int | None = None
    eval_every: int = 0
    patience: int = 0
    min_delta: float = 1e-3

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.steps, int) or self.steps < 1:
            problems.append(f"steps={self.steps!r} must be a positive int")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr={self.lr!r} must be a positive number")
        if self.optimizer.lower() not in ("sgd", "adam", "adamw"):
            problems.append(f"optimizer={self.optimizer!r} must be sgd, adam or adamw")
        if self.schedule not in ("cosine", "constant"):
            problems.append(f"schedule={self.schedule!r} must be cosine or constant")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size!r} must be a positive int")
        mb = self.micro_batch_size
        if mb is not None and (not isinstance(mb, int) or mb < 1):
            problems.append(f"micro_batch_size={self.micro_batch_size!r} must be a positive int or None")
        penalties = (self.gamma, self.l1, self.group)
        if not all(isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for x in penalties):
            problems.append(f"gamma={self.gamma}, l1={self.l1}, group={self.group} must be finite and >= 0")
        if not isinstance(self.patience, int) or self.patience < 0:
            problems.append(f"patience={self.patience!r} must be an int >= 0 (0 = no early stop)")
        if self.reduction not in ("mean", "sum"):
            problems.append(f"reduction={self.reduction!r} must be mean or sum")
        if problems:
            raise LineasError("invalid TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    losses: list[float]
    eval_before: float | None
    eval_after: float | None
    seconds: float
    steps: int
    support: float
    target_acts: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    eval_curve: list[tuple[int, float]] = field(default_factory=list)
    target_seconds: float = 0.0
    last_site: str | None = None

    def summary(self) -> dict:
        """JSON-friendly figures (no tensors) for file metadata and reports."""
        return {
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
            "target_seconds": round(self.target_seconds, 3),
            "loss_first": self.losses[0] if self.losses else None,
            "loss_last": self.losses[-1] if self.losses else None,
            "eval_before": self.eval_before,
            "eval_after": self.eval_after,
            "support": self.support,
        }


# -- sample dicts ---------------------------------------------------------------------------------------
def num_samples(inputs: Mapping[str, Any]) -> int:
    sizes = {k: v.shape[0] for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.dim() > 0}
    if not sizes:
        raise LineasError("inputs hold no tensor with a leading sample axis")
    if len(set(sizes.values())) != 1:
        raise LineasError(f"inputs disagree on the number of samples: {sizes}")
    return next(iter(sizes.values()))


def slice_samples(inputs: Mapping[str, Any], idx: torch.Tensor | slice) -> dict[str, Any]:
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            out[k] = v[idx] if isinstance(idx, slice) else v.index_select(0, idx.to(v.device))
        else:
            out[k] = v
    return out


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


# -- recording ------------------------------------------------------------------------------------------
def _forward_recorded(root, specs, forward, batch, *, steering, strength, mask_key, stop_after, detach):
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
) -> dict[str, torch.Tensor]:
    """Pooled activations [N, d] at each site (after the steering, if given), without gradients.
    The forward stops after the last site once the firing order is known."""
    return _record(root, specs, forward, inputs, steering=steering, strength=strength, batch_size=batch_size,
                   mask_key=mask_key, stop_after_last=stop_after_last)[0]


def _record(root, specs, forward, inputs, *, steering=None, strength=1.0, batch_size=32,
            mask_key="attention_mask", stop_after_last=True) -> tuple[dict[str, torch.Tensor], str | None]:
    """:func:`record_activations`, also returning the last site to fire (where later forwards may stop)."""
    n = num_samples(inputs)
    chunks: dict[str, list[torch.Tensor]] = {s: [] for s in specs}
    stop = None
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = slice_samples(inputs, slice(start, start + batch_size))
            acts, order = _forward_recorded(root, specs, forward, batch, steering=steering, strength=strength,
                                            mask_key=mask_key, stop_after=stop, detach=True)
            if stop_after_last and stop is None:
                stop = order[-1]
            for s, v in acts.items():
                chunks[s].append(v)
    return {s: torch.cat(v) for s, v in chunks.items()}, stop


def grouped_loss(src: Mapping[str, torch.Tensor], tgt: Mapping[str, torch.Tensor],
                 src_groups: torch.Tensor | None, tgt_groups: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """:func:`ot_loss`, or its mean over groups (e.g. noise levels) compared separately."""
    if src_groups is None or tgt_groups is None:
        return ot_loss(src, tgt, reduction)
    terms = []
    for g in torch.unique(src_groups).tolist():
        si = (src_groups == g).nonzero().flatten()
        ti = (tgt_groups == g).nonzero().flatten()
        if ti.numel() == 0:
            raise LineasError(f"group {g} has source samples but no target samples")
        terms.append(ot_loss({k: v.index_select(0, si.to(v.device)) for k, v in src.items()},
                             {k: tgt[k].index_select(0, ti.to(tgt[k].device)) for k in src}, reduction))
    return torch.stack(terms).mean()


def _groups(inputs: Mapping[str, Any], key: str) -> torch.Tensor | None:
    g = inputs.get(key) if key else None
    return g.detach().cpu() if isinstance(g, torch.Tensor) else None


def evaluate_loss(root, steering, forward, source, target_acts, *, specs: Mapping[str, SiteSpec] | None = None,
                  config: TrainConfig | None = None, strength: float = 1.0,
                  target_groups: torch.Tensor | None = None) -> float:
    """Loss of the steering (at ``strength``; ``steering=None`` and ``specs`` for the unsteered model)
    on ``source`` against cached ``target_acts``."""
    cfg = config or TrainConfig()
    if specs is None:
        if steering is None:
            raise LineasError("evaluate_loss needs the site specs when no steering is given")
        specs = steering.specs
    acts = record_activations(root, specs, forward, source, steering=steering, strength=strength,
                              batch_size=cfg.record_batch_size or cfg.batch_size, mask_key=cfg.mask_key,
                              stop_after_last=cfg.stop_after_last_site)
    tg = target_groups if target_groups is not None else _groups(target_acts, cfg.group_key)
    return float(grouped_loss(acts, {s: target_acts[s] for s in acts}, _groups(source, cfg.group_key), tg,
                              cfg.reduction))


# -- training -------------------------------------------------------------------------------------------
def _batches(n: int, size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    if size >= n:
        while True:
            yield torch.arange(n)
    while True:
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n - size + 1, size):
            yield perm[start:start + size]


def fit(
    root: nn.Module,
    steering: Steering,
    forward: Forward,
    source: Mapping[str, Any],
    target: Mapping[str, Any] | None = None,
    *,
    config: TrainConfig | None = None,
    target_acts: Mapping[str, torch.Tensor] | None = None,
    eval_source: Mapping[str, Any] | None = None,
    on_step: OnStep | None = None,
    last_site: str | None = None,
) -> TrainResult:
    """Train ``steering`` in place so that the steered source activations match the target's in
    distribution at every site, end to end (the loss at a site sees every upstream map).

    ``target_acts`` (e.g. ``result.target_acts`` of an earlier run) skips the target pass; it may carry
    the target groups under ``config.group_key``; pass ``last_site=result.last_site`` with it so that even
    the first step stops after the last site (otherwise the first step runs whole to learn the order).
    ``on_step(step, loss)`` is called after every step and may raise to stop training (nothing is
    written by this function).
    """
    cfg = config or TrainConfig()
    if target is None and target_acts is None:
        raise LineasError("fit needs target samples or cached target_acts")
    specs = steering.specs
    n = num_samples(source)
    if n < 2:
        raise LineasError(f"need at least 2 source samples, got {n}")
    rec_bs = cfg.record_batch_size or cfg.batch_size
    t0 = time.perf_counter()
    if last_site is not None and last_site not in specs:
        raise LineasError(f"last_site={last_site!r} is not one of the steering's sites")
    with frozen(root):
        if target_acts is None:
            if num_samples(target) < 2:
                raise LineasError(f"need at least 2 target samples, got {num_samples(target)}")
            target_acts, last_site = _record(root, specs, forward, target, batch_size=rec_bs,
                                             mask_key=cfg.mask_key, stop_after_last=cfg.stop_after_last_site)
            tg = _groups(target, cfg.group_key)
            if tg is not None:
                target_acts[cfg.group_key] = tg
        else:
            target_acts = dict(target_acts)
            missing = [s for s in specs if s not in target_acts]
            if missing:
                raise LineasError(f"cached target activations lack sites {missing[:5]}")
        for s in specs:
            if not torch.isfinite(target_acts[s]).all():
                raise NonFiniteLossError(
                    f"target activations at site {s!r} contain NaN/inf; check the target inputs"
                )
        target_seconds = time.perf_counter() - t0
        tgt_groups = _groups(target_acts, cfg.group_key)
        tgt = {s: target_acts[s] for s in specs}

        eval_before = None
        if eval_source is not None:
            eval_before = evaluate_loss(root, None, forward, eval_source, tgt, specs=specs, config=cfg,
                                        target_groups=tgt_groups)

        params = list(steering.parameters())
        opt = make_optimizer(params, cfg.optimizer, cfg.lr, cfg.weight_decay)
        sched = cosine_schedule(opt, cfg.steps, cfg.warmup) if cfg.schedule == "cosine" else None
        gen = torch.Generator().manual_seed(cfg.seed)
        batches = _batches(n, cfg.batch_size, gen)
        stop = last_site if cfg.stop_after_last_site else None
        losses: list[float] = []
        eval_curve: list[tuple[int, float]] = []
        best, since_best = math.inf, 0
        for step in range(1, cfg.steps + 1):
            idx = next(batches)
            batch = slice_samples(source, idx)
            src_groups = _groups(batch, cfg.group_key)
            with torch.enable_grad():
                loss, order = _step_loss(root, steering, forward, batch, tgt, src_groups, tgt_groups, cfg, stop)
            if stop is None and cfg.stop_after_last_site:
                stop = order[-1]
            value = float(loss)
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"loss became {value} at step {step}; lower the learning rate (lr={cfg.lr}) "
                    "or check the inputs for NaN/inf"
                )
            tau = opt.param_groups[0]["lr"]
            opt.step()
            opt.zero_grad(set_to_none=True)
            if cfg.gamma > 0:
                prox_sparse_group_lasso_(steering, tau, cfg.gamma, cfg.l1, cfg.group)
            if sched is not None:
                sched.step()
            losses.append(value)
            if cfg.eval_every and eval_source is not None and step % cfg.eval_every == 0:
                eval_curve.append((step, evaluate_loss(root, steering, forward, eval_source, tgt, config=cfg,
                                                       target_groups=tgt_groups)))
            if on_step is not None:
                on_step(step, value)
            if cfg.patience:
                if value < best * (1 - cfg.min_delta):
                    best, since_best = value, 0
                else:
                    since_best += 1
                    if since_best >= cfg.patience:
                        logger.info("early stop at step %d: no improvement for %d steps", step, cfg.patience)
                        break
        eval_after = None
        if eval_source is not None:
            eval_after = evaluate_loss(root, steering, forward, eval_source, tgt, config=cfg,
                                       target_groups=tgt_groups)
    seconds = time.perf_counter() - t0
    logger.info("trained %d steps in %.1f s: loss %.4g -> %.4g", len(losses), seconds, losses[0], losses[-1])
    return TrainResult(losses=losses, eval_before=eval_before, eval_after=eval_after, seconds=seconds,
                       steps=len(losses), support=steering.support(), target_acts=target_acts,
                       eval_curve=eval_curve, target_seconds=target_seconds, last_site=stop)


def _step_loss(root, steering, forward, batch, tgt, src_groups, tgt_groups, cfg, stop):
    """Loss of one mini-batch, with gradients accumulated in the steering parameters.

    With ``micro_batch_size`` the batch is run in two passes: pooled activations without graph, the loss
    and its gradient w.r.t. them, then one forward+backward per micro-batch that pushes that gradient
    into the steering. The gradient is the same as one big pass (the loss couples all samples through
    sorting, so plain accumulation would be wrong) and memory is bounded by the micro-batch.
    """
    specs = steering.specs
    m = cfg.micro_batch_size
    n = num_samples(batch)
    if m is None or m >= n:
        src, order = _forward_recorded(root, specs, forward, batch, steering=steering, strength=1.0,
                                       mask_key=cfg.mask_key, stop_after=stop, detach=False)
        loss = grouped_loss(src, tgt, src_groups, tgt_groups, cfg.reduction)
        loss.backward()
        return loss.detach(), order
    pooled: dict[str, list[torch.Tensor]] = {s: [] for s in specs}
    order: list[str] = []
    with torch.no_grad():
        for start in range(0, n, m):
            acts, order = _forward_recorded(root, specs, forward, slice_samples(batch, slice(start, start + m)),
                                            steering=steering, strength=1.0, mask_key=cfg.mask_key,
                                            stop_after=stop, detach=True)
            for s, v in acts.items():
                pooled[s].append(v)
    leaves = {s: torch.cat(v).requires_grad_(True) for s, v in pooled.items()}
    loss = grouped_loss(leaves, tgt, src_groups, tgt_groups, cfg.reduction)
    grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
    for start in range(0, n, m):
        acts, _ = _forward_recorded(root, specs, forward, slice_samples(batch, slice(start, start + m)),
                                    steering=steering, strength=1.0, mask_key=cfg.mask_key,
                                    stop_after=stop, detach=False)
        surrogate = sum((acts[s] * grads[s][start:start + m].to(acts[s])).sum() for s in acts)
        surrogate.backward()
    return loss.detach(), order
