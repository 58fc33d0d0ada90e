"""Learning a steering on a causal LM from two text sets (source = the concept to remove, e.g. toxic;
target = what to move towards, e.g. non-toxic), with any registered method of the engine (LinEAS end to
end, or the layer-wise baseline): the result is the engine's SteeringRecord, saved with save_record."""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch

from lineas_engine import SteeringRecord, TrainConfig, TrainResult, model_fingerprint, site_specs, train

from .data import hash_texts, require_samples
from .models import LoadedModel
from .sites import choose_sites

__all__ = ["encode", "lm_forward", "train_steering"]

logger = logging.getLogger(__name__)


def encode(lm: LoadedModel, texts: Sequence[str], max_length: int = 64) -> dict[str, torch.Tensor]:
    """Tokenize (left padding; pooling masks it out) into a sample dict on the CPU; through the chat
    template when ``lm.chat`` is set (then with a ``content_mask`` for pooling, see :mod:`.chat`)."""
    from .chat import encode_texts

    return encode_texts(lm.tokenizer, texts, lm.chat, max_length)


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return pad if pad is not None else (tokenizer.eos_token_id or 0)


def lm_forward(lm: LoadedModel) -> Callable[[dict], object]:
    dev = lm.device
    return lambda b: lm.model(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev),
                              use_cache=False)


#: largest relative difference of pooled activations the shared-prefix forward may show (float rounding: fp32 about
#: 1e-6 measured on SmolLM2; bf16 / fp16 round each activation to 3 significant digits)
PREFIX_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-3}
PREFIX_TOLERANCE_HALF = 5e-2


def _shared_prefix(lm: LoadedModel, specs, forward, src: dict, tgt: dict, mask_key: str):
    """Chat training: the template's shared first tokens run once per batch (see :mod:`.prefix`) when the model
    reproduces the full texts that way (checked on two texts), else the full texts, with a warning."""
    from .prefix import prefix_difference, prefixed_forward, split_shared_prefix

    prefix, (short_src, short_tgt) = split_shared_prefix([src, tgt], mask_key, _pad_id(lm.tokenizer))
    if prefix is None:
        return forward, src, tgt
    fast = prefixed_forward(lm.model, prefix, lm.device)
    tolerance = PREFIX_TOLERANCE.get(lm.dtype, PREFIX_TOLERANCE_HALF)
    try:
        diff = prefix_difference(lm.model, specs, forward, fast, src, short_src, mask_key)
        why = f"pooled activations differ by {diff:.2g} (relative; at most {tolerance:g} expected)"
    except Exception as e:  # noqa: BLE001 - any failure of the shortcut means: train on the full texts
        diff, why = float("inf"), f"{type(e).__name__}: {e}"
    if diff <= tolerance:
        logger.info("chat template: its %d shared first tokens run once per batch (%s)", prefix.shape[1], why)
        return fast, short_src, short_tgt
    logger.warning("chat template: running its %d shared first tokens once per batch does not reproduce the full "
                   "texts on %s (%s); training reads the full texts (slower, same result)", prefix.shape[1],
                   lm.architecture, why)
    return forward, src, tgt


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
    training_prompts: Sequence[str] = (),
    name: str = "steering",
    preserve: Sequence[str] = (),
    preserve_weight: float | None = None,
) -> tuple[SteeringRecord, TrainResult]:
    """Train a steering that maps the model's activations on ``source`` texts onto those on ``target``.
    The record carries the model's fingerprint and the hashes of every training text and of
    ``training_prompts`` (the prompts the sets were built from), so that evaluation can refuse them.
    ``preserve`` texts (optional) add :func:`~llm_sidecar.preserve.kl_regularizer` at ``preserve_weight``
    (default :data:`~llm_sidecar.preserve.PRESERVE_WEIGHT`) to the loss; they are hashed and recorded too."""
    require_samples(source, "the source set")
    require_samples(target, "the target set")
    cfg = config or TrainConfig()
    if lm.chat is not None:
        from dataclasses import replace

        from .chat import CONTENT_MASK

        cfg = replace(cfg, mask_key=CONTENT_MASK)  # pool over the texts' own tokens, not the template's
    regularizer = None
    if preserve:
        from .preserve import PRESERVE_WEIGHT, kl_regularizer

        preserve_weight = PRESERVE_WEIGHT if preserve_weight is None else preserve_weight
        regularizer = kl_regularizer(lm, preserve, preserve_weight, seed=cfg.seed)
    sites = choose_sites(lm.model, sites_pattern)
    src, tgt = encode(lm, source, max_length), encode(lm, target, max_length)
    specs = site_specs(lm.model, sites)
    forward = lm_forward(lm)
    if lm.chat is not None:
        forward, src, tgt = _shared_prefix(lm, specs, forward, src, tgt, cfg.mask_key)
    steering, result = train(lm.model, specs, forward, src, tgt, method=method,
                             config=cfg, on_step=on_step, device=lm.device, regularizer=regularizer)
    fingerprint = {**model_fingerprint(lm.model, lm.architecture), "model": lm.name}
    record = SteeringRecord.from_training(steering, result, cfg, name=name, fingerprint=fingerprint,
                                          num_sites=len(sites))
    record.training.setdefault("maps", cfg.maps)
    record.extra["training_text_hashes"] = sorted(set(hash_texts([*source, *target, *training_prompts, *preserve])))
    if regularizer is not None:
        record.extra["preserve"] = {"kind": "next-token KL to the unsteered model", "texts": len(preserve),
                                    "weight": preserve_weight}
        record.extra["preserve_text_hashes"] = hash_texts(preserve)  # eval refuses them as --neutral too
    record.extra["chat"] = lm.chat.to_dict() if lm.chat is not None else {"enabled": False}
    return record, result
