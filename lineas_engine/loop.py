"""End-to-end training of a steering with the distributional loss: the nanoGPT-minimal loop behind the
``lineas`` method. The host's ``forward(batch)`` moves data; the engine never does."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from .config import Forward, OnStep, Regularizer, TrainConfig, TrainResult
from .errors import LineasError, NonFiniteLossError
from .hooks import steered
from .optim import cosine_schedule, make_optimizer, prox_sparse_group_lasso_
from .packed_loss import SortedTarget
from .recording import evaluate_loss, forward_recorded, frozen, grouped_loss, record_activations
from .samples import minibatches, num_samples, sample_groups, slice_samples
from .steering import Steering

__all__ = ["fit"]

logger = logging.getLogger(__name__)


@dataclass
class _Targets:
    acts: dict[str, torch.Tensor]
    groups: torch.Tensor | None
    last_site: str | None
    packed: SortedTarget | None = None

    def sorted_for(self, source: Mapping[str, torch.Tensor], grouped: bool, reduction: str) -> SortedTarget:
        """The target packed and sorted once for the whole run (made again only if the call changes)."""
        sites = list(source)
        device = source[sites[0]].device
        grouped = grouped and self.groups is not None
        if self.packed is None or not self.packed.matches(sites, grouped, reduction, device):
            self.packed = SortedTarget(self.acts, sites, self.groups if grouped else None, reduction, device)
        return self.packed


def fit(
    root: nn.Module,
    steering: Steering,
    forward: Forward,
    source: Mapping[str, Any],
    target: Mapping[str, Any] | None = None,
    *,
    config: TrainConfig | None = None,
    target_acts: Mapping[str, torch.Tensor] | None = None,
    target_groups: torch.Tensor | None = None,
    eval_source: Mapping[str, Any] | None = None,
    on_step: OnStep | None = None,
    last_site: str | None = None,
    regularizer: Regularizer | None = None,
) -> TrainResult:
    """Train ``steering`` in place so that the steered source activations match the target's in
    distribution at every site, end to end (the loss at a site sees every upstream map).

    ``target_acts`` (e.g. ``result.target_acts`` of an earlier run, with ``target_groups=result.target_groups``)
    skips the target pass; pass ``last_site=result.last_site`` with it so that even the first step stops
    after the last site (otherwise the first step runs whole to learn the order). ``eval_source`` gets the
    whole-set loss before and after. ``on_step(step, loss)`` is called after every step and may raise to
    stop training (nothing is written by this function).

    ``regularizer(step, steered)`` (optional, see :data:`~lineas_engine.config.Regularizer`) is added to every
    step's loss; ``result.losses`` stay the OT loss alone and ``result.regularizer_values``
    hold the term's values."""
    cfg = config or TrainConfig()
    if num_samples(source) < 2:
        raise LineasError(f"need at least 2 source samples, got {num_samples(source)}")
    if last_site is not None and last_site not in steering.specs:
        raise LineasError(f"last_site={last_site!r} is not one of the steering's sites")
    t0 = time.perf_counter()
    with frozen(root):
        tg = _targets(root, steering, forward, target, target_acts, target_groups, last_site, cfg)
        target_seconds = time.perf_counter() - t0

        def evaluate(s: Steering | None) -> float:
            return evaluate_loss(root, s, forward, eval_source, tg.acts, specs=steering.specs, config=cfg,
                                 target_groups=tg.groups)

        eval_before = evaluate(None) if eval_source is not None else None
        losses, eval_curve, stop, reg_values = _optimise(root, steering, forward, source, tg, cfg, on_step,
                                                         evaluate if eval_source is not None else None, regularizer)
        eval_after = evaluate(steering) if eval_source is not None else None
    seconds = time.perf_counter() - t0
    logger.info("trained %d steps in %.1f s: loss %.4g -> %.4g", len(losses), seconds, losses[0], losses[-1])
    return TrainResult(losses=losses, eval_before=eval_before, eval_after=eval_after, seconds=seconds,
                       steps=len(losses), support=steering.support(), target_acts=tg.acts, target_groups=tg.groups,
                       eval_curve=eval_curve, target_seconds=target_seconds, last_site=stop,
                       regularizer_values=reg_values)


def _targets(root, steering, forward, target, target_acts, target_groups, last_site, cfg) -> _Targets:
    """The target's pooled activations (recorded once, or the cached ones), checked finite."""
    specs = steering.specs
    if target_acts is None:
        if target is None:
            raise LineasError("fit needs target samples or cached target_acts")
        if num_samples(target) < 2:
            raise LineasError(f"need at least 2 target samples, got {num_samples(target)}")
        acts, last_site = record_activations(root, specs, forward, target,
                                             batch_size=cfg.recording_batch_size,
                                             mask_key=cfg.mask_key, stop_after_last=cfg.stop_after_last_site,
                                             return_last_site=True)
        target_groups = sample_groups(target, cfg.group_key)
    else:
        missing = [s for s in specs if s not in target_acts]
        if missing:
            raise LineasError(f"cached target activations lack sites {missing[:5]}")
        acts = {s: target_acts[s] for s in specs}
    for s in specs:
        if not torch.isfinite(acts[s]).all():
            raise NonFiniteLossError(f"target activations at site {s!r} contain NaN/inf; check the target inputs")
    return _Targets(acts, target_groups, last_site if cfg.stop_after_last_site else None)


def _optimise(root, steering, forward, source, tg: _Targets, cfg: TrainConfig, on_step, evaluate, regularizer=None):
    """The loop: sample a mini-batch, loss and gradient (plus the host's regularizer), optimiser step, proximal
    step, schedule."""
    with _learning(steering, cfg.maps) as learned:
        opt = make_optimizer(learned, cfg.optimizer, cfg.lr, cfg.weight_decay)
        sched = cosine_schedule(opt, cfg.steps, cfg.warmup) if cfg.schedule == "cosine" else None
        batches = minibatches(num_samples(source), cfg.batch_size, torch.Generator().manual_seed(cfg.seed))
        stop, losses, eval_curve, reg_values = tg.last_site, [], [], []
        patience = _Patience(cfg.patience, cfg.min_delta)
        for step in range(1, cfg.steps + 1):
            batch = slice_samples(source, next(batches))
            with torch.enable_grad():
                loss, order = _step_loss(root, steering, forward, batch, tg, cfg, stop)
            if stop is None and cfg.stop_after_last_site:
                stop = order[-1]
            value = float(loss)
            if not math.isfinite(value):
                raise NonFiniteLossError(f"loss became {value} at step {step}; lower the learning rate (lr={cfg.lr}) "
                                         "or check the inputs for NaN/inf")
            total = value
            if regularizer is not None:
                reg = _regularizer_step(root, steering, regularizer, step)
                reg_values.append(reg)
                total += reg
            tau = opt.param_groups[0]["lr"]
            opt.step()
            opt.zero_grad(set_to_none=True)
            if cfg.gamma > 0:
                prox_sparse_group_lasso_(steering, tau, cfg.gamma, cfg.l1, cfg.group)
            if sched is not None:
                sched.step()
            losses.append(value)
            if cfg.eval_every and evaluate is not None and step % cfg.eval_every == 0:
                eval_curve.append((step, evaluate(steering)))
            if on_step is not None:
                on_step(step, value)
            if patience.exhausted(total):
                logger.info("early stop at step %d: no improvement for %d steps", step, cfg.patience)
                break
        return losses, eval_curve, stop, reg_values


def _regularizer_step(root, steering: Steering, regularizer: Regularizer, step: int) -> float:
    """The host's term at ``step``; its gradient is added to the OT loss's."""
    with torch.enable_grad():
        r = regularizer(step, lambda: steered(root, steering))
    if not isinstance(r, torch.Tensor) or r.numel() != 1:
        raise LineasError(f"the regularizer must return a scalar tensor, got {type(r).__name__}"
                          + (f" of shape {tuple(r.shape)}" if isinstance(r, torch.Tensor) else ""))
    value = float(r.detach())
    if not math.isfinite(value):
        raise NonFiniteLossError(f"the regularizer became {value} at step {step}; check its inputs for NaN/inf")
    if not r.requires_grad:
        raise LineasError("the regularizer's value has no gradient: it must run the model inside the steered() "
                          "context it is given, and keep the graph")
    r.backward()
    return value


@contextlib.contextmanager
def _learning(steering: Steering, maps: str):
    """Yields the parameters ``maps`` trains; the others are frozen (no gradient) at the identity they start
    from for the duration, and every parameter's ``requires_grad`` is as it was afterwards."""
    learned = {"affine": ("scale", "shift"), "scale": ("scale",), "shift": ("shift",)}[maps]
    halves = {name: list(getattr(steering, name).values()) for name in ("scale", "shift")}
    flags = [(p, p.requires_grad) for ps in halves.values() for p in ps]
    try:
        for name, ps in halves.items():
            for p in ps:
                p.requires_grad_(name in learned)
        yield [p for name in learned for p in halves[name]]
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class _Patience:
    """Early stop once the loss has not improved by a relative ``min_delta`` for ``patience`` steps (0 = never)."""

    def __init__(self, patience: int, min_delta: float):
        self.patience, self.min_delta = patience, min_delta
        self.best, self.since_best = math.inf, 0

    def exhausted(self, value: float) -> bool:
        if not self.patience:
            return False
        if value < self.best * (1 - self.min_delta):
            self.best, self.since_best = value, 0
            return False
        self.since_best += 1
        return self.since_best >= self.patience


def _step_loss(root, steering, forward, batch, tg: _Targets, cfg: TrainConfig, stop):
    """Loss of one mini-batch, with gradients accumulated in the steering parameters.

    With ``micro_batch_size`` the batch is run in two passes: pooled activations without graph, the loss
    and its gradient w.r.t. them, then one forward+backward per micro-batch that pushes that gradient
    into the steering. The gradient is the same as one big pass (the loss couples all samples through
    sorting, so plain accumulation would be wrong) and memory is bounded by the micro-batch.
    """
    specs = steering.specs
    src_groups = sample_groups(batch, cfg.group_key)
    m = cfg.micro_batch_size
    n = num_samples(batch)

    def run(part, detach):
        return forward_recorded(root, specs, forward, part, steering=steering, mask_key=cfg.mask_key,
                                stop_after=stop, detach=detach)

    if m is None or m >= n:
        src, order = run(batch, False)
        loss = grouped_loss(src, tg.sorted_for(src, src_groups is not None, cfg.reduction), src_groups, None,
                            cfg.reduction)
        loss.backward()
        return loss.detach(), order
    parts = [slice_samples(batch, slice(start, start + m)) for start in range(0, n, m)]
    pooled: dict[str, list[torch.Tensor]] = {s: [] for s in specs}
    with torch.no_grad():
        for part in parts:
            acts, order = run(part, True)
            for s, v in acts.items():
                pooled[s].append(v)
    leaves = {s: torch.cat(v).requires_grad_(True) for s, v in pooled.items()}
    loss = grouped_loss(leaves, tg.sorted_for(leaves, src_groups is not None, cfg.reduction), src_groups, None,
                        cfg.reduction)
    sites = list(leaves)
    grad = torch.cat(torch.autograd.grad(loss, [leaves[s] for s in sites]), dim=1)  # [n, D], fp32
    for start, part in zip(range(0, n, m), parts):
        acts, _ = run(part, False)
        packed = torch.cat([acts[s].to(grad.device, torch.float32) for s in sites], dim=1)
        (packed * grad[start:start + m]).sum().backward()
    return loss.detach(), order
