"""Export a steered model as a plain Hugging Face folder (no project code needed to load it).

The scale part of every site is folded into its norm weight (the engine's ``fold_``, checked
numerically). A shift b after an RMSNorm (no bias) is folded exactly into the biases of the linear
layers that read that norm's output: for Llama-style blocks the post-attention norm feeds
``mlp.gate_proj`` and ``mlp.up_proj``, so ``bias += W @ b`` there, with ``config.mlp_bias = True`` (the
down projections get zero biases). Where no such place exists (e.g. Gemma's post norms, whose output is
added to the residual stream), the export refuses with the reason."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil

import torch

from lineas_engine import LineasError, Steering, fold_, steered

from .devices import full_state_dict, is_dispatched
from .llama_export import ALTERNATIVES, LLAMA_EQUIVALENT, llama_config, refusal_reason
from .models import LoadedModel

__all__ = ["export_folded"]

logger = logging.getLogger(__name__)
_LLAMA_POST = re.compile(r"(.*\.)?layers\.(\d+)\.post_attention_layernorm")


def _split(steering: Steering) -> tuple[Steering, dict[str, torch.Tensor]]:
    """The scales alone (shifts zero), and the non-zero shifts by site."""
    scale_only = Steering.from_tensors(steering.specs, {s: steering.weight(s) for s in steering.sites},
                                       {s: torch.zeros(p.dim) for s, p in steering.specs.items()})
    shifts = {s: steering.bias(s).detach().clone() for s in steering.sites if bool((steering.bias(s) != 0).any())}
    return scale_only, shifts


def _shift_consumers(model, site: str) -> list[str]:
    m = _LLAMA_POST.fullmatch(site)
    cfg = model.config
    if m is None or not (hasattr(cfg, "mlp_bias") or cfg.model_type in LLAMA_EQUIVALENT):
        raise LineasError(
            f"site {site!r} has a shift that cannot be folded exactly into a {cfg.model_type} model "
            f"({refusal_reason(cfg) if m is not None else 'its output has no following bias to absorb it'}); "
            f"{ALTERNATIVES}")
    prefix = site[: -len("post_attention_layernorm")]
    return [prefix + "mlp.gate_proj", prefix + "mlp.up_proj"]


def export_folded(lm: LoadedModel, steering: Steering, out_dir: str | os.PathLike, *, strength: float = 1.0,
                  scale_only: bool = False, check_texts: list[str] | None = None) -> dict:
    """Write the folded model + tokenizer to ``out_dir`` (atomically: a temp folder renamed at the end)
    and return a report with the max |logit| difference between the export and the hooked steering."""
    from transformers import AutoModelForCausalLM

    from .validate import check_export_dir

    out = check_export_dir(str(out_dir))
    parent = out.parent
    model = lm.model
    steer = steering.at_strength(strength)
    scale, shifts = _split(steer)
    if scale_only:
        shifts = {}
    consumers = {s: _shift_consumers(model, s) for s in shifts}

    if getattr(model, "is_quantized", False) or getattr(model.config, "quantization_config", None):
        raise LineasError("export needs the full-precision weights; load the model without --load-in")
    if shifts and not hasattr(model.config, "mlp_bias"):
        cfg = llama_config(model.config)  # Qwen2 / Mistral as the equivalent Llama with biases (or the reason)
    else:
        cfg = model.config.__class__.from_dict(model.config.to_dict())
    if shifts:
        cfg.mlp_bias = True
    new = AutoModelForCausalLM.from_config(cfg, dtype=lm.dtype)
    state = full_state_dict(model)  # on the CPU, also weights that accelerate offloaded
    here = torch.device("cpu") if is_dispatched(model) else lm.device  # a dispatched model may fit nowhere whole
    missing, unexpected = new.load_state_dict(state, strict=False)
    if unexpected:
        raise LineasError(f"export: unexpected weights {unexpected[:3]}")
    with torch.no_grad():
        for name in missing:  # new biases (mlp_bias): zero unless a shift lands there
            p = new.get_parameter(name) if name in dict(new.named_parameters()) else None
            if p is None:
                continue
            if not name.endswith(".bias"):
                raise LineasError(f"export: weight {name} missing from the source model")
            p.zero_()
        for site, b in shifts.items():
            for lin in consumers[site]:
                mod = new.get_submodule(lin)
                mod.bias.add_(mod.weight.float() @ b.to(mod.weight.device).float())
    new.to(here).eval()
    report = fold_(new, scale)
    if not report.complete:
        raise LineasError(f"cannot fold sites {sorted(report.skipped)[:3]}: {next(iter(report.skipped.values()))}")

    texts = check_texts or ["The quick brown fox jumps over the lazy dog.", "I can't believe you would say that"]
    enc = lm.tokenizer(texts, return_tensors="pt", padding=True).to(lm.device)
    with torch.no_grad():
        with steered(model, steer):
            hooked = model(**enc).logits.float().cpu()
        folded = new(**enc.to(here)).logits.float().cpu()
    real = enc["attention_mask"].bool().cpu()  # padded positions attend to nothing: their logits are not outputs
    diff = (hooked - folded)[real].abs().max().item()

    tmp = parent / f".{out.name}.{secrets.token_hex(6)}.tmp"
    tmp.mkdir(mode=0o777)  # the umask applies, as for any folder the user makes (mkdtemp would give 0700)
    try:
        new.save_pretrained(tmp, safe_serialization=True)
        lm.tokenizer.save_pretrained(tmp)
        info = {"source_model": lm.name, "architecture": type(new).__name__, "strength": strength,
                "sites": steering.sites, "folded_shifts": sorted(shifts),
                "scale_only": scale_only, "max_abs_logit_diff_vs_hooked": diff}
        (tmp / "lineas_export.json").write_text(json.dumps(info, indent=2))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported to %s (max |logit diff| vs hooked %.2e)", out, diff)
    return info
