"""The chat template's shared first tokens run once per batch in training (llm_sidecar.prefix): the pooled
activations and the steering's gradients equal those of the full formatted texts, on a real tiny Llama and
Gemma-3 (whose sliding-window layers keep their own cache), with texts longer than Gemma's window."""

import pytest
import torch

from .conftest import CLEAN, TOXIC
from .test_chat import TEMPLATE

LONG = "the first day of the long way to the river was calm and bright and the people said it was lovely"  # > window


def _chat_lm(folder):
    from llm_sidecar.chat import ChatFormat
    from llm_sidecar.models import load_model

    lm = load_model(folder, device="cpu", dtype="float32")
    lm.tokenizer.chat_template = TEMPLATE
    lm.tokenizer.padding_side = "left"
    lm.chat = ChatFormat(system="be kind")
    return lm


def _random_steering(model):
    from lineas_engine import Steering, site_specs
    from llm_sidecar.sites import choose_sites

    steering = Steering(site_specs(model, choose_sites(model, None)))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for s in steering.sites:
            steering.weight(s).copy_(1 + 0.3 * torch.randn(steering.weight(s).shape, generator=g))
            steering.bias(s).copy_(0.1 * torch.randn(steering.bias(s).shape, generator=g))
    return steering


def _pooled_and_grads(lm, steering, forward, batch):
    from lineas_engine import forward_recorded
    from llm_sidecar.chat import CONTENT_MASK

    steering.zero_grad()
    acts, _ = forward_recorded(lm.model, steering.specs, forward, batch, steering=steering, mask_key=CONTENT_MASK,
                               stop_after=steering.sites[-1])
    sum((a ** 2).mean() for a in acts.values()).backward()
    return acts, {s: steering.weight(s).grad.clone() for s in steering.sites}


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_prefixed_forward_equals_the_full_forward(family, tiny_llama_dir, tiny_gemma_dir):
    from llm_sidecar.chat import CONTENT_MASK
    from llm_sidecar.prefix import prefixed_forward, split_shared_prefix
    from llm_sidecar.train import encode, lm_forward

    lm = _chat_lm(tiny_llama_dir if family == "llama" else tiny_gemma_dir)
    texts = TOXIC[:3] + [LONG]
    full = encode(lm, texts)
    prefix, (short,) = split_shared_prefix([full], CONTENT_MASK, lm.tokenizer.pad_token_id)
    assert lm.tokenizer.decode(prefix[0]) == "this is be kind ."
    assert short["input_ids"].shape[1] < full["input_ids"].shape[1]  # prefix and trailing template tokens gone
    steering = _random_steering(lm.model)
    want_acts, want_grads = _pooled_and_grads(lm, steering, lm_forward(lm), full)
    acts, grads = _pooled_and_grads(lm, steering, prefixed_forward(lm.model, prefix, lm.device), short)
    for s in steering.sites:
        torch.testing.assert_close(acts[s], want_acts[s], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(grads[s], want_grads[s], rtol=1e-3, atol=1e-6)
    assert any(g.abs().max() > 0 for g in grads.values())


def test_split_keeps_each_texts_own_tokens_and_a_prefix_common_to_both_sets(tiny_llama_dir):
    from llm_sidecar.chat import CONTENT_MASK
    from llm_sidecar.prefix import split_shared_prefix
    from llm_sidecar.train import encode

    lm = _chat_lm(tiny_llama_dir)
    src, tgt = encode(lm, TOXIC), encode(lm, CLEAN)
    prefix, (s, t) = split_shared_prefix([src, tgt], CONTENT_MASK, 0)
    assert prefix.shape == (1, 5)
    for batch, full in ((s, src), (t, tgt)):
        for i in range(len(full["input_ids"])):
            own = batch["input_ids"][i][batch[CONTENT_MASK][i].bool()]
            assert torch.equal(own, full["input_ids"][i][full[CONTENT_MASK][i].bool()])  # the same pooled tokens
            n = int(batch["attention_mask"][i].sum())
            assert batch["attention_mask"][i, :n].all() and not batch["attention_mask"][i, n:].any()  # right padding


def test_no_shared_prefix_leaves_the_batches_as_they_are(tiny_llama_dir):
    from llm_sidecar.chat import CONTENT_MASK, ChatFormat
    from llm_sidecar.prefix import split_shared_prefix
    from llm_sidecar.train import encode

    lm = _chat_lm(tiny_llama_dir)
    lm.tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} .{% endfor %}"  # the text comes first
    lm.chat = ChatFormat()  # no system prompt before it
    batch = encode(lm, TOXIC)
    prefix, (same,) = split_shared_prefix([batch], CONTENT_MASK, 0)
    assert prefix is None and same is batch


def test_training_checks_the_shortcut_and_falls_back_to_the_full_texts(tiny_llama_dir, monkeypatch, caplog):
    import logging

    from lineas_engine import TrainConfig
    from llm_sidecar import prefix, train

    lm = _chat_lm(tiny_llama_dir)
    cfg = TrainConfig(steps=3, optimizer="sgd", lr=0.1, batch_size=8, maps="scale")
    with caplog.at_level(logging.INFO, logger="llm_sidecar.train"):
        fast, _ = train.train_steering(lm, TOXIC, CLEAN, config=cfg)
    assert "its 5 shared first tokens run once per batch" in caplog.text
    caplog.clear()
    # a wrong shortcut (the prefix dropped) must be caught before training, which then reads the full texts
    monkeypatch.setattr(prefix, "prefixed_forward", lambda model, p, device: train.lm_forward(lm))
    with caplog.at_level(logging.INFO, logger="llm_sidecar.train"):
        full, _ = train.train_steering(lm, TOXIC, CLEAN, config=cfg)
    assert "does not reproduce the full texts" in caplog.text
    for s in fast.steering.sites:  # both trained on what the full texts give, up to float rounding
        torch.testing.assert_close(fast.steering.weight(s), full.steering.weight(s), rtol=0, atol=1e-5)
    assert any((fast.steering.weight(s) - 1).abs().max() > 1e-4 for s in fast.steering.sites)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_the_shortcut_passes_its_check_in_half_precision(family, dtype, tiny_llama_dir, tiny_gemma_dir, caplog):
    """GPU users train in bf16 / fp16: the cache's rounding must stay within the half-precision tolerance, or
    every chat training there would fall back to the full texts (slower, with a warning)."""
    import logging

    from lineas_engine import TrainConfig
    from llm_sidecar import train
    from llm_sidecar.chat import ChatFormat
    from llm_sidecar.models import load_model

    lm = load_model(tiny_llama_dir if family == "llama" else tiny_gemma_dir, device="cpu", dtype=dtype)
    lm.tokenizer.chat_template = TEMPLATE
    lm.tokenizer.padding_side = "left"
    lm.chat = ChatFormat(system="be kind")
    cfg = TrainConfig(steps=2, optimizer="sgd", lr=0.1, batch_size=4, maps="scale")
    with caplog.at_level(logging.INFO, logger="llm_sidecar.train"):
        train.train_steering(lm, TOXIC[:3] + [LONG], CLEAN[:4], config=cfg)
    assert "shared first tokens run once per batch" in caplog.text, caplog.text
