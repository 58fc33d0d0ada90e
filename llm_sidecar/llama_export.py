"""Exact export of shifts beyond Llama: a family whose blocks compute exactly what a Llama block computes
(same RMSNorm, rotary embedding, attention and gated MLP; only some linear biases differ) is written as
``LlamaForCausalLM`` with the biases it needs, so the shifts can land in MLP biases (``mlp_bias=True``).

- Qwen2 / Qwen2.5 (``qwen2``): q/k/v projections with biases, o without -> ``attention_bias=True`` with a
  zero o_proj bias. Exact when no layer uses sliding-window attention (Llama has none).
- Mistral (``mistral``): a Llama block plus a sliding attention window -> exact when the window is off or
  covers every position the model accepts (``sliding_window >= max_position_embeddings``).

Other families are refused with the reason (see :func:`refusal_reason`)."""

from __future__ import annotations

from lineas_engine import LineasError

__all__ = ["ALTERNATIVES", "LLAMA_EQUIVALENT", "llama_config", "refusal_reason"]

LLAMA_EQUIVALENT = ("qwen2", "mistral")

# keys of the source config that describe what Llama lacks (checked below) or only identify the source
_DROP = {"model_type", "architectures", "sliding_window", "use_sliding_window", "max_window_layers", "layer_types",
         "auto_map", "transformers_version", "_name_or_path", "dtype", "torch_dtype"}

_REASONS = {
    "qwen3": "Qwen3 normalises queries and keys (q_norm / k_norm), which the Llama architecture has not, and its "
             "own architecture has no MLP biases",
    "qwen3_moe": "Qwen3-MoE has q/k norms and routed experts, which the Llama architecture has not",
    "gemma2": "Gemma's post norms feed the residual stream directly, with no following bias to absorb a shift",
    "gemma3": "Gemma's post norms feed the residual stream directly, with no following bias to absorb a shift",
    "gemma3_text": "Gemma's post norms feed the residual stream directly, with no following bias to absorb a shift",
    "mixtral": "Mixtral's experts are routed and have no biases, and the Llama architecture has no router",
    "phi3": "Phi-3 fuses gate and up projections (gate_up_proj) without biases",
}


# what to do instead, ending every refusal of an exact export with shifts
ALTERNATIVES = ("apply the steering with hooks (lineas-llm generate --steering), export with --scale-only (drops "
                "the shifts, not exact) or retrain with --maps scale (no shifts: exact export)")


def refusal_reason(cfg) -> str:
    """Why a shift cannot be folded exactly into this family (one clause, for the error message)."""
    mt = getattr(cfg, "model_type", "unknown")
    return _REASONS.get(mt, f"{mt} models have no bias after the steered norm and no exact Llama equivalent here")


def llama_config(cfg):
    """The ``LlamaConfig`` computing exactly what ``cfg``'s model computes, with ``mlp_bias=True``; a
    :class:`LineasError` naming the reason when there is none."""
    from transformers import LlamaConfig

    mt = cfg.model_type
    if mt not in LLAMA_EQUIVALENT:
        raise LineasError(f"a {mt} model cannot be exported exactly with shifts: {refusal_reason(cfg)}; "
                          f"{ALTERNATIVES}")
    window = getattr(cfg, "sliding_window", None)
    if mt == "qwen2":
        types = getattr(cfg, "layer_types", None) or []
        if getattr(cfg, "use_sliding_window", False) or "sliding_attention" in types:
            raise LineasError(f"this Qwen2 model uses sliding-window attention (window {window}), which the Llama "
                              "architecture has not, so its shifts cannot be exported exactly; "
                              f"{ALTERNATIVES}")
    if mt == "mistral" and window is not None and window < cfg.max_position_embeddings:
        raise LineasError(f"this Mistral model attends within a sliding window of {window} tokens (< its "
                          f"{cfg.max_position_embeddings} positions), which the Llama architecture has not, so "
                          f"its shifts cannot be exported exactly; {ALTERNATIVES}")
    d = {k: v for k, v in cfg.to_dict().items() if k not in _DROP}
    d.update(attention_bias=(mt == "qwen2"), mlp_bias=True, architectures=["LlamaForCausalLM"])
    out = LlamaConfig(**d)
    if getattr(cfg, "head_dim", None):
        out.head_dim = cfg.head_dim
    return out
