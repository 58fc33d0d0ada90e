"""Default steering sites per architecture family (the paper's choice), with a regex override."""

from __future__ import annotations

import logging

from torch import nn

from lineas_engine import find_sites

__all__ = ["FAMILY_SITES", "family", "default_pattern", "choose_sites"]

logger = logging.getLogger(__name__)

_PRE_MLP = r"(.*\.)?layers\.\d+\.post_attention_layernorm"
_GEMMA = r"(.*\.)?layers\.\d+\.(post_attention_layernorm|post_feedforward_layernorm)"
_GPT2 = r"(.*\.)?h\.\d+\.ln_2"

# model_type -> regex (re.fullmatch on module names). Llama/Qwen/Mistral have one post norm per block
# (the pre-MLP norm); Gemma 2/3 have two (after attention and after the MLP); GPT-2 style uses ln_2.
FAMILY_SITES: dict[str, str] = {
    **{t: _PRE_MLP for t in ("llama", "qwen2", "qwen3", "mistral", "mixtral", "qwen2_moe", "qwen3_moe",
                             "smollm3", "olmo2", "granite", "phi3", "starcoder2")},
    **{t: _GEMMA for t in ("gemma2", "gemma3", "gemma3_text")},
    **{t: _GPT2 for t in ("gpt2", "gpt_bigcode")},
}


def family(model: nn.Module) -> str:
    """The ``model_type`` of a transformers model (``"unknown"`` otherwise)."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "model_type", None) or "unknown"


def default_pattern(model: nn.Module) -> str | None:
    return FAMILY_SITES.get(family(model))


def choose_sites(model: nn.Module, pattern: str | None = None) -> list[str]:
    """Module names to steer: ``pattern`` if given, else the family default, else the engine's
    ``post_norms`` preset (norms named ``post*norm``). Nothing matched -> ``NoMatchingSiteError``."""
    if pattern:
        return find_sites(model, pattern=pattern)
    pat = default_pattern(model)
    if pat is not None:
        return find_sites(model, pattern=pat)
    logger.info("no site default for model_type %r; using the 'post_norms' preset", family(model))
    return find_sites(model, preset="post_norms")
