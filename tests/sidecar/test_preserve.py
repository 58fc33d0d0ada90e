"""The --preserve fluency term: the next-token KL against torch's own KL divergence, zero at the identity,
and `lineas-llm train --preserve` on a tiny real Llama (the term is trained against, recorded, its texts
refused as evaluation texts, its misuse refused before anything loads or is written)."""

import pytest
import torch

from llm_sidecar.cli import main
from llm_sidecar.preserve import next_token_kl

from .conftest import NEUTRAL
from .test_chat import chat_dir  # noqa: F401 (the fixture)
from .test_cli import _train


def test_next_token_kl_is_torchs_kl_divergence_over_the_masked_positions():
    g = torch.Generator().manual_seed(0)
    base, logits = torch.randn(3, 5, 11, generator=g) * 3, torch.randn(3, 5, 11, generator=g) * 3
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    ref = torch.nn.functional.kl_div(torch.log_softmax(logits, -1), torch.log_softmax(base, -1), log_target=True,
                                     reduction="none").sum(-1)
    expected = ref[mask.bool()].mean()
    assert torch.allclose(next_token_kl(base, logits, mask), expected, rtol=1e-5, atol=1e-7)
    assert next_token_kl(base, base.clone(), mask) == 0
    logits[0, 4] = 1e4  # a masked-out position never counts
    assert torch.allclose(next_token_kl(base, logits, mask), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("limit", [None, 0])
def test_kept_unsteered_targets_are_the_forwards_own(tiny_llama_dir, limit):
    """What the KL needs of the unsteered logits of the preserve texts, kept after their first batch, equals what
    a fresh forward of every later batch gives (other compositions, other padding widths), and the model runs once
    per text instead of once per step; with no room to keep them (limit 0) every call runs the model."""
    from lineas_engine.samples import minibatches
    from llm_sidecar.models import load_model
    from llm_sidecar.perplexity import encode_scored
    from llm_sidecar.preserve import PRESERVE_CACHE_BYTES, _UnsteeredTargets, unsteered_targets

    lm = load_model(tiny_llama_dir, device="cpu")
    enc = encode_scored(lm.tokenizer, NEUTRAL[:6], 128)
    ids, attn = enc["input_ids"], enc["attention_mask"]
    base = _UnsteeredTargets(lm.model, ids, attn, "cpu", PRESERVE_CACHE_BYTES if limit is None else limit)
    calls = []
    hook = lm.model.register_forward_hook(lambda m, i, o: calls.append(1))
    batches = minibatches(len(ids), 4, torch.Generator().manual_seed(0))
    try:
        for _ in range(6):
            idx = next(batches)
            keep = int(attn[idx].sum(dim=1).max())
            got = base(idx, keep)
            n = len(calls)
            with torch.no_grad():
                fresh = lm.model(input_ids=ids[idx, :keep], attention_mask=attn[idx, :keep]).logits[:, :-1]
            del calls[n:]  # the reference forward is not counted
            want_p, want_neg = unsteered_targets(fresh[attn[idx, 1:keep].bool()])  # text after text
            assert got[0].shape == want_p.shape and got[1].shape == want_neg.shape
            torch.testing.assert_close(got[0], want_p, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(got[1], want_neg, rtol=1e-4, atol=1e-5)
    finally:
        hook.remove()
    assert len(calls) == (6 if limit == 0 else 2)  # kept: the first batch, then once for the text it left out


@pytest.mark.parametrize("limit", [None, 0])
def test_preserve_term_is_the_masked_next_token_kl_of_each_batch(tiny_llama_dir, limit, monkeypatch):
    """The regularizer (kept targets or not) equals next_token_kl of the batch's unsteered and steered logits over
    the predicted positions (the reference), in value and in gradient, at every step of an epoch and the next."""
    from lineas_engine import Steering, site_specs
    from lineas_engine.hooks import steered
    from lineas_engine.samples import minibatches
    from llm_sidecar import preserve
    from llm_sidecar.models import load_model
    from llm_sidecar.perplexity import encode_scored
    from llm_sidecar.sites import choose_sites

    if limit is not None:
        monkeypatch.setattr(preserve, "PRESERVE_CACHE_BYTES", limit)  # no room to keep them: recomputed each step
    lm = load_model(tiny_llama_dir, device="cpu")
    steering = Steering(site_specs(lm.model, choose_sites(lm.model, None)))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for s in steering.sites:
            steering.weight(s).copy_(1 + 0.2 * torch.randn(steering.weight(s).shape, generator=g))
    texts = NEUTRAL[:6]
    reg = preserve.kl_regularizer(lm, texts, 2.0, batch_size=4, seed=3)
    enc = encode_scored(lm.tokenizer, texts, 128)
    ids, attn = enc["input_ids"], enc["attention_mask"]
    batches = minibatches(len(texts), 4, torch.Generator().manual_seed(3))  # the regularizer's own draw
    for step in range(4):
        idx = next(batches)
        keep = int(attn[idx].sum(dim=1).max())
        with torch.no_grad():
            base = lm.model(input_ids=ids[idx, :keep], attention_mask=attn[idx, :keep]).logits[:, :-1]
        steering.zero_grad()
        with steered(lm.model, steering):
            logits = lm.model(input_ids=ids[idx, :keep], attention_mask=attn[idx, :keep]).logits[:, :-1]
        want = 2.0 * preserve.next_token_kl(base, logits, attn[idx, 1:keep])
        want.backward()
        want_grads = [steering.weight(s).grad.clone() for s in steering.sites]
        steering.zero_grad()
        got = reg(step, lambda: steered(lm.model, steering))
        got.backward()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
        for s, w in zip(steering.sites, want_grads):
            torch.testing.assert_close(steering.weight(s).grad, w, rtol=1e-3, atol=1e-8)
        assert want > 0


def _kl_of(model_dir, steering_file, texts):
    from lineas_engine import load_steering
    from lineas_engine.hooks import steered
    from llm_sidecar.models import load_model
    from llm_sidecar.preserve import kl_regularizer

    lm = load_model(model_dir, device="cpu")
    steering, _ = load_steering(steering_file)
    reg = kl_regularizer(lm, texts, 1.0, batch_size=len(texts))
    with torch.no_grad():
        return reg(1, lambda: steered(lm.model, steering)).item()


def test_train_with_preserve_keeps_the_steered_model_nearer_on_those_texts(tiny_llama_dir, texts, capsys):
    from lineas_engine import load_steering

    free, kept = texts / "free.safetensors", texts / "kept.safetensors"
    assert _train(tiny_llama_dir, texts, free, "--no-preserve") == 0
    assert _train(tiny_llama_dir, texts, kept, "--preserve", str(texts / "neutral.txt"),
                  "--preserve-weight", "1e6") == 0
    out = capsys.readouterr().out
    assert "wrote" in out
    _, meta = load_steering(kept)
    assert meta.extra["preserve"] == {"kind": "next-token KL to the unsteered model", "texts": len(NEUTRAL),
                                      "weight": 1e6}
    assert len(meta.extra["training_text_hashes"]) == 16 + len(NEUTRAL)
    assert meta.training["regularizer_first"] == 0.0  # the identity
    steering, _ = load_steering(kept)
    assert steering.support() > 0  # it still learnt a map ...
    kl_free, kl_kept = _kl_of(tiny_llama_dir, free, NEUTRAL), _kl_of(tiny_llama_dir, kept, NEUTRAL)
    assert abs(kl_kept) < 0.1 * kl_free, (kl_kept, kl_free)  # ... that leaves the neutral texts' predictions alone
    # the preserve texts are training texts: eval refuses them as --neutral
    rc = main(["eval", "--model", tiny_llama_dir, "--steering", str(kept), "--prompts", str(texts / "prompts.txt"),
               "--neutral", str(texts / "neutral.txt"), "--report", str(texts / "rep"), "--max-new-tokens", "4",
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "--neutral texts were used to keep this steering fluent in training (--preserve)" in err, err
    assert not (texts / "rep").exists()
    # nor may `lineas-llm calibrate` calibrate on them
    rc = main(["calibrate", "--model", tiny_llama_dir, "--steering", str(kept), "--calibrate-on",
               str(texts / "neutral.txt"), "--max-ppl-increase", "0.05", "--out", str(texts / "c.safetensors"),
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "--calibrate-on texts were used to keep this steering fluent" in err, err
    assert not (texts / "c.safetensors").exists()


@pytest.mark.parametrize("model", ["tiny_gemma_dir", "chat_dir"])
def test_preserve_on_gemma_and_through_the_chat_template(model, texts, request):
    """Another family (Gemma-3: two post norms per block) and the chat path (a tiny Llama with a chat template:
    the training texts go through the template, the preserve texts stay raw text, as perplexity is measured)."""
    from lineas_engine import load_steering

    model_dir = request.getfixturevalue(model)
    chat = ["--chat"] if model == "chat_dir" else []
    free, kept = texts / "free.safetensors", texts / "kept.safetensors"
    assert _train(model_dir, texts, free, "--no-preserve", *chat) == 0
    assert _train(model_dir, texts, kept, "--preserve", str(texts / "neutral.txt"), "--preserve-weight", "1e6",
                  *chat) == 0
    _, meta = load_steering(kept)
    assert meta.extra["preserve"]["texts"] == len(NEUTRAL) and meta.training["regularizer_first"] == 0.0
    assert meta.extra["chat"]["enabled"] == (model == "chat_dir")
    kl_free, kl_kept = _kl_of(model_dir, free, NEUTRAL), _kl_of(model_dir, kept, NEUTRAL)
    assert abs(kl_kept) < 0.1 * kl_free, (kl_kept, kl_free)


@pytest.mark.parametrize("extra, match", [
    (["--no-preserve", "--preserve-weight", "0.5"], "--no-preserve turns the fluency term off"),
    (["--no-preserve", "--preserve", "NEUTRAL"], "--no-preserve turns the fluency term off"),
    (["--preserve", "NEUTRAL", "--method", "layerwise"], "--preserve needs an iterative method"),
    (["--preserve", "MISSING"], "MISSING"),
    (["--preserve", "NEUTRAL", "--calibrate-on", "NEUTRAL"], "--calibrate-on texts were used to --preserve"),
])
def test_preserve_misuse_is_refused_and_writes_nothing(tiny_llama_dir, texts, capsys, extra, match):
    extra = [str(texts / "neutral.txt") if x == "NEUTRAL" else str(texts / "missing.txt") if x == "MISSING" else x
             for x in extra]
    out = texts / "s.safetensors"
    assert _train(tiny_llama_dir, texts, out, *extra) == 1
    err = capsys.readouterr().err
    assert match.replace("MISSING", "missing.txt") in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
