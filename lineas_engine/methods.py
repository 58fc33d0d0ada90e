"""The training methods, behind one entry point: ``train(root, specs, forward, source, target, method=...)``.

A method turns (model, sites, source, target, config) into a steering; ``train`` adds what every method
reports the same way: the OT loss of the unsteered and the steered model on the whole evaluation set
(the source set unless told otherwise), seconds, steps and support. Methods are registered by name
(``register_method``), spelled the same in every host and in the files they save."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .config import Forward, OnStep, Regularizer, TrainConfig, TrainResult
from .errors import LineasError
from .layerwise import fit_layerwise
from .loop import fit
from .recording import evaluate_loss, grouped_loss, record_activations
from .samples import sample_groups
from .sites import SiteSpec
from .steering import Steering

__all__ = ["Method", "METHODS", "register_method", "get_method", "train"]

logger = logging.getLogger(__name__)

MethodFn = Callable[..., tuple[Steering, TrainResult]]
"""``fn(root, specs, forward, source, target, *, config, on_step, eval_source, device) -> (steering, result)``;
``result.eval_before`` / ``eval_after`` must be the whole-set OT loss on ``eval_source``."""


@dataclass(frozen=True)
class Method:
    name: str
    fn: MethodFn
    description: str
    iterative: bool  # uses steps, learning rate, optimizer and sparsity


METHODS: dict[str, Method] = {}
_ALIASES: dict[str, str] = {}


def register_method(name: str, fn: MethodFn, *, description: str, iterative: bool = True,
                    aliases: tuple[str, ...] = ()) -> Method:
    """Add a method under ``name`` (lower case, words joined by '-'); refuses duplicates."""
    if not name or name != name.lower() or " " in name:
        raise LineasError(f"method name {name!r} must be lower case without spaces, e.g. 'my-method'")
    for n in (name, *aliases):
        if n in METHODS or n in _ALIASES:
            raise LineasError(f"method {n!r} is already registered")
    METHODS[name] = Method(name, fn, description, iterative)
    _ALIASES.update({a: name for a in aliases})
    return METHODS[name]


def get_method(name: str) -> Method:
    """The registered method called ``name`` (or one of its aliases, e.g. ``layerwise``)."""
    key = _ALIASES.get(name, name)
    if key not in METHODS:
        raise LineasError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[key]


def train(
    root: nn.Module,
    specs: Mapping[str, SiteSpec],
    forward: Forward,
    source: Mapping[str, Any],
    target: Mapping[str, Any],
    *,
    method: str = "lineas",
    config: TrainConfig | None = None,
    on_step: OnStep | None = None,
    eval_source: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    regularizer: Regularizer | None = None,
) -> tuple[Steering, TrainResult]:
    """Learn a steering of ``root`` at ``specs`` that maps the activations on ``source`` onto those on
    ``target`` with ``method``; returns it (on the CPU) and the run's figures (``result.method`` is the
    canonical name). ``device``: where the steering lives while training (default: the model's).
    ``regularizer``: a host's term added to each step's loss (:data:`~lineas_engine.config.Regularizer`);
    iterative methods only."""
    m = get_method(method)
    if regularizer is not None and not m.iterative:
        raise LineasError(f"method {m.name!r} is fitted in closed form and takes no regularizer; use 'lineas'")
    cfg = config or TrainConfig()
    if device is None:
        device = next((p.device for p in root.parameters()), torch.device("cpu"))
    t0 = time.perf_counter()
    extra = {"regularizer": regularizer} if regularizer is not None else {}
    steering, result = m.fn(root, specs, forward, source, target, config=cfg, on_step=on_step,
                            eval_source=source if eval_source is None else eval_source, device=device, **extra)
    result.seconds = time.perf_counter() - t0
    result.method = m.name
    logger.info("%s on %d sites in %.1f s: whole-set loss %.4g -> %.4g", m.name, len(specs), result.seconds,
                result.eval_before, result.eval_after)
    return steering.cpu(), result


def _lineas(root, specs, forward, source, target, *, config, on_step, eval_source, device, regularizer=None):
    steering = Steering(specs).to(device)
    return steering, fit(root, steering, forward, source, target, config=config, on_step=on_step,
                         eval_source=eval_source, regularizer=regularizer)


def _layerwise(root, specs, forward, source, target, *, config, on_step, eval_source, device):
    """Closed form per site on the unsteered model; the loss before / after on the same groups as LinEAS."""
    if config.maps != "affine":
        raise LineasError(f"the layerwise method fits both w and b in closed form; maps={config.maps!r} needs "
                          "method 'lineas'")
    rec = dict(batch_size=config.recording_batch_size, mask_key=config.mask_key)
    tgt_acts = record_activations(root, specs, forward, target, **rec)
    src_acts = record_activations(root, specs, forward, source, **rec)
    steering = fit_layerwise(root, specs, forward, None, target_acts=tgt_acts, source_acts=src_acts).to(device)
    tgt_groups = sample_groups(target, config.group_key)
    if eval_source is source:
        before = float(grouped_loss(src_acts, tgt_acts, sample_groups(source, config.group_key), tgt_groups,
                                    config.reduction))
    else:
        before = evaluate_loss(root, None, forward, eval_source, tgt_acts, specs=specs, config=config,
                               target_groups=tgt_groups)
    after = evaluate_loss(root, steering, forward, eval_source, tgt_acts, config=config, target_groups=tgt_groups)
    return steering, TrainResult(losses=[before, after], eval_before=before, eval_after=after, seconds=0.0,
                                 steps=0, support=steering.support(), target_acts=tgt_acts, target_groups=tgt_groups)


register_method("lineas", _lineas, description="end to end: the OT loss at every site sees every upstream map")
register_method("layer-wise", _layerwise, iterative=False, aliases=("layerwise",),
                description="baseline: each site's affine OT map fitted alone on the unsteered model")
