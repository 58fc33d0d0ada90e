"""What a training run is told (``TrainConfig``) and what it reports (``TrainResult``); both are plain
dataclasses stored in steering files as JSON."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ContextManager, Mapping

import torch

from .errors import LineasError

__all__ = ["TrainConfig", "TrainResult", "Forward", "OnStep", "Regularizer", "MAPS"]

#: what training learns of each map h -> w * h + b: both (the paper), the scales only (b stays 0: the map
#: folds into the site's own weight on any architecture) or the shifts only (w stays 1).
MAPS = ("affine", "scale", "shift")

Forward = Callable[[Mapping[str, Any]], Any]
"""The host's forward pass on one mini-batch (a sample dict); the engine never moves data."""
OnStep = Callable[[int, float], None]
"""Called after every training step with (step, loss); may raise to stop training."""
Regularizer = Callable[[int, Callable[[], ContextManager[Any]]], torch.Tensor]
"""A host's term added to each step's loss: ``regularizer(step, steered)`` returns a scalar tensor; inside
``with steered():`` the steering being trained is attached at strength 1 (outside it, the model runs
unsteered). It runs whatever forward passes it needs (e.g. a KL divergence of the steered model's
next-token distribution to the unsteered one's on neutral texts); the engine backpropagates it."""


@dataclass
class TrainConfig:
    """Settings of a training run. Defaults are the paper's LLM setting (SGD 0.1, cosine, 1000 steps, batch 32).

    ``patience > 0`` stops early once the training loss has not improved by a relative ``min_delta`` over
    its best value for ``patience`` consecutive steps (``steps`` stays the schedule's horizon).

    ``maps``: ``affine`` learns w and b (the paper); ``scale`` learns w with b held at 0; ``shift`` learns b
    with w held at 1 (see :data:`MAPS`)."""

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
    maps: str = "affine"

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
        if self.maps not in MAPS:
            problems.append(f"maps={self.maps!r} must be one of {', '.join(MAPS)}")
        if self.reduction not in ("mean", "sum"):
            problems.append(f"reduction={self.reduction!r} must be mean or sum")
        if problems:
            raise LineasError("invalid TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def recording_batch_size(self) -> int:
        """Samples per forward in the passes without gradient (target recording, whole-set evaluation):
        ``record_batch_size``, else the micro-batch (what memory was sized for), else the batch."""
        return self.record_batch_size or self.micro_batch_size or self.batch_size


@dataclass
class TrainResult:
    """The figures of one run. ``eval_before`` / ``eval_after``: the OT loss on the whole evaluation set
    (by default the source set) of the unsteered and the trained model, the same figure for every method."""

    losses: list[float]
    eval_before: float | None
    eval_after: float | None
    seconds: float
    steps: int
    support: float
    target_acts: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    target_groups: torch.Tensor | None = field(repr=False, default=None)
    eval_curve: list[tuple[int, float]] = field(default_factory=list)
    target_seconds: float = 0.0
    last_site: str | None = None
    method: str = "lineas"
    regularizer_values: list[float] = field(default_factory=list)

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
            **({"regularizer_first": self.regularizer_values[0], "regularizer_last": self.regularizer_values[-1]}
               if self.regularizer_values else {}),
        }
