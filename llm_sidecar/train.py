"""Learning a steering on a causal LM from two text sets (source = the concept to remove, e.g. toxic;
target = what to move towards, e.g. non-toxic), with LinEAS (end to end) or the layer-wise baseline."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from lineas_engine import (
    Steering,
    TrainConfig,
    TrainResult,
    fit,
    fit_layerwise,
    model_fingerprint,
    save_steering,
    site_specs,
)

from .data import hash_texts, require_samples
from .models import LoadedModel
from .sites import choose_sites

__all__ = ["encode", "lm_forward", "TrainOutcome", "train_steering", "save_trained"]

logger = logging.getLogger(__name__)


def encode(lm: LoadedModel, texts: Sequence[str], max_length: int = 64) -> dict[str, torch.Tensor]:
    """Tokenize (left padding; pooling masks it out) into a sample dict on the CPU; through the chat
    template when ``lm.chat`` is set (then with a ``content_mask`` for pooling, see :mod:`.chat`)."""
    from .chat import encode_texts

    return encode_texts(lm.tokenizer, texts, lm.chat, max_length)


def lm_forward(lm: LoadedModel) -> Callable[[dict], object]:
    dev = lm.device
    return lambda b: lm.model(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev),
                              use_cache=False)


@dataclass
class TrainOutcome:
    steering: Steering
    method: str
    sites: list[str]
    result: TrainResult | None
    seconds: float
    source_hashes: list[str]
    calibration: dict | None = None  # set when the map was calibrated to a utility budget (calibrate.py)


def train_steering(
    lm: LoadedModel,
    source: Sequence[str],
    target: Sequence[str],
    *,
    method: str = "lineas",
    sites_pattern: str | None = None,
    config: TrainConfig | None = None,
    max_length: int = 64,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainOutcome:
    """Train a steering that maps the model's activations on ``source`` texts onto those on ``target``."""
    import time

    require_samples(source, "the source set")
    require_samples(target, "the target set")
    cfg = config or TrainConfig()
    if lm.chat is not None:
        from dataclasses import replace

        from .chat import CONTENT_MASK

        cfg = replace(cfg, mask_key=CONTENT_MASK)  # pool over the texts' own tokens, not the template's
    sites = choose_sites(lm.model, sites_pattern)
    specs = site_specs(lm.model, sites)
    src, tgt = encode(lm, source, max_length), encode(lm, target, max_length)
    fwd = lm_forward(lm)
    t0 = time.perf_counter()
    if method == "lineas":
        steering = Steering(specs).to(lm.device)
        result = fit(lm.model, steering, fwd, src, tgt, config=cfg, on_step=on_step)
    elif method == "layerwise":
        steering = fit_layerwise(lm.model, specs, fwd, src, tgt, batch_size=cfg.batch_size, mask_key=cfg.mask_key)
        result = None
    else:
        raise ValueError(f"method must be 'lineas' or 'layerwise', got {method!r}")
    seconds = time.perf_counter() - t0
    logger.info("%s steering on %d sites trained in %.1f s", method, len(sites), seconds)
    return TrainOutcome(steering.cpu(), method, sites, result, seconds, hash_texts(list(source) + list(target)))


def save_trained(path, lm: LoadedModel, outcome: TrainOutcome, config: TrainConfig, *,
                 training_prompts: Sequence[str] = (), calibration_texts: Sequence[str] = ()) -> None:
    """Save with the model fingerprint, the config, a training summary and the hashes of every training
    text and prompt, and of the calibration texts (so that evaluation can refuse them)."""
    training = {"method": outcome.method, "seconds": round(outcome.seconds, 2), "num_sites": len(outcome.sites)}
    if outcome.result is not None:
        training.update(outcome.result.summary())
    if outcome.calibration is not None:
        training["calibration"] = outcome.calibration
    save_steering(
        path,
        outcome.steering,
        fingerprint={**model_fingerprint(lm.model, lm.architecture), "model": lm.name},
        config=config.to_dict() if outcome.method == "lineas" else {"method": "layerwise"},
        training=training,
        extra={"training_text_hashes": sorted(set(outcome.source_hashes) | set(hash_texts(training_prompts))),
               "chat": lm.chat.to_dict() if lm.chat is not None else {"enabled": False},
               **({"calibration_text_hashes": hash_texts(calibration_texts)} if calibration_texts else {})},
    )
