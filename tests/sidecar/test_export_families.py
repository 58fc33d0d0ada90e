"""Exact export beyond Llama: tiny Qwen2 and Mistral models built from their transformers configs, a random
steering with shifts on every site, exported as plain HF folders (the equivalent Llama with biases):
logits within 1e-4 of the hooked steering and equal greedy tokens. Families without an exact form
(Qwen3's q/k norms, a Mistral sliding window shorter than its context) are refused with the reason."""

import pytest
import torch

from .conftest import _save, _tokenizer

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=128, pad_token_id=0, eos_token_id=1, bos_token_id=3, initializer_range=0.2)


def _model_dir(tmp_path, family, **over):
    import transformers as tf

    cls = {"qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM"),
           "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"), "llama": ("LlamaConfig", "LlamaForCausalLM"),
           "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM")}[family]
    torch.manual_seed(0)
    tok = _tokenizer()
    cfg = getattr(tf, cls[0])(vocab_size=len(tok), **{**SMALL, **over})
    model = getattr(tf, cls[1])(cfg).eval()
    with torch.no_grad():  # non-trivial norms and q/k/v biases (init puts ones / zeros there)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("norm.weight") else 0.0))
    return _save(model, tok, tmp_path / family)


def _random_steering(lm, seed=1):
    from lineas_engine import Steering, site_specs
    from llm_sidecar.sites import choose_sites

    s = Steering(site_specs(lm.model, choose_sites(lm.model)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for site in s.sites:
            s.weight(site).copy_(1 + 0.3 * torch.randn(s.weight(site).shape, generator=g))
            s.bias(site).copy_(0.5 * torch.randn(s.bias(site).shape, generator=g))
    return s


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_exact_export(family, tmp_path):
    from transformers import AutoModelForCausalLM

    from lineas_engine import steered
    from llm_sidecar.export import export_folded
    from llm_sidecar.models import load_model

    lm = load_model(_model_dir(tmp_path, family), device="cpu")
    steering = _random_steering(lm)
    info = export_folded(lm, steering, tmp_path / "out", strength=0.8)
    assert info["architecture"] == "LlamaForCausalLM" and len(info["folded_shifts"]) == 2
    folded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert folded.config.mlp_bias
    enc = lm.tokenizer(["you are a stupid idiot and", "the garden is lovely in the"], return_tensors="pt",
                       padding=True)
    with torch.no_grad():
        with steered(lm.model, steering, 0.8):
            hooked = lm.model(**enc).logits
            hooked_tokens = lm.model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=0)
        unsteered = lm.model(**enc).logits
        out = folded(**enc).logits
        out_tokens = folded.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=0)
    real = enc["attention_mask"].bool()
    assert (out - hooked)[real].abs().max().item() <= 1e-4
    assert (unsteered - hooked)[real].abs().max().item() > 1e-2  # the steering does change the model
    assert torch.equal(out_tokens, hooked_tokens)


@pytest.mark.parametrize("family,over,reason", [
    ("qwen3", {"head_dim": 8}, "q_norm / k_norm"),
    ("mistral", {"sliding_window": 16}, "sliding window of 16 tokens"),
    ("gemma3_text", {"head_dim": 8, "sliding_window": 4}, "post norms feed the residual stream"),
])
def test_export_refuses_families_without_an_exact_form(family, over, reason, tmp_path):
    from lineas_engine import LineasError
    from llm_sidecar.export import export_folded
    from llm_sidecar.models import load_model

    lm = load_model(_model_dir(tmp_path, family, **over), device="cpu")
    with pytest.raises(LineasError, match=reason) as e:
        export_folded(lm, _random_steering(lm), tmp_path / "out")
    for way_out in ("generate --steering", "--scale-only", "--maps scale"):  # every refusal says what to do instead
        assert way_out in str(e.value)
    assert not (tmp_path / "out").exists()
    export_folded(lm, _random_steering(lm), tmp_path / "scale", scale_only=True)  # scales still fold
    assert (tmp_path / "scale" / "config.json").is_file()


@pytest.mark.parametrize("family,over", [("qwen3", {"head_dim": 8}), ("mistral", {"sliding_window": 16}),
                                         ("gemma3_text", {"head_dim": 8, "sliding_window": 4})])
def test_a_shift_free_steering_exports_exactly_where_shifts_are_refused(family, over, tmp_path):
    """What ``lineas-llm train --maps scale`` makes (b = 0 everywhere) folds into the norms' own weights, so the
    families refused above export it exactly, in their own architecture, without --scale-only."""
    from transformers import AutoModelForCausalLM

    from lineas_engine import steered
    from llm_sidecar.export import export_folded
    from llm_sidecar.models import load_model

    lm = load_model(_model_dir(tmp_path, family, **over), device="cpu")
    steering = _random_steering(lm)
    with torch.no_grad():
        for site in steering.sites:
            steering.bias(site).zero_()
    info = export_folded(lm, steering, tmp_path / "out", strength=0.8)
    assert info["folded_shifts"] == [] and info["scale_only"] is False
    folded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert folded.config.model_type == family  # its own architecture, not the Llama equivalent
    enc = lm.tokenizer(["you are a stupid idiot and", "the garden is lovely in the"], return_tensors="pt",
                       padding=True)
    with torch.no_grad():
        with steered(lm.model, steering, 0.8):
            hooked = lm.model(**enc).logits
        unsteered = lm.model(**enc).logits
        out = folded(**enc).logits
    real = enc["attention_mask"].bool()
    assert (out - hooked)[real].abs().max().item() <= 1e-4
    assert (unsteered - hooked)[real].abs().max().item() > 1e-2
