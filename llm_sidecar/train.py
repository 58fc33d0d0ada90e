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
    forward = lm_forward(lm)
    if lm.chat is not None:  # the template's shared first tokens run once per batch (see .prefix)
        from .prefix import prefixed_forward, split_shared_prefix

        prefix, (src, tgt) = split_shared_prefix([src, tgt], cfg.mask_key, _pad_id(lm.tokenizer))
        if prefix is not None:
            logger.info("chat template: its %d shared first tokens run once per batch", prefix.shape[1])
            forward = prefixed_forward(lm.model, prefix, lm.device)
    steering, result = train(lm.model, site_specs(lm.model, sites), forward, src, tgt, method=method,
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
