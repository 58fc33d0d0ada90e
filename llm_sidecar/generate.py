"""Batched sampling of continuations (left padding), optionally under a steering, with the paper's
protocol as defaults: 32 new tokens, temperature 1.0, top_p 0.3, repetition penalty 1.2."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from lineas_engine import steered

from .models import LoadedModel
from .progress import progress

__all__ = ["GenConfig", "Generation", "generate"]

logger = logging.getLogger(__name__)


@dataclass
class GenConfig:
    """Sampling settings (paper protocol by default). ``temperature == 0`` means greedy."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 0.3
    repetition_penalty: float = 1.2
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Generation:
    prompts: list[str]
    continuations: list[str]
    seconds: float
    new_tokens: int
    seed: int

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")


def generate(
    lm: LoadedModel,
    prompts: Sequence[str],
    config: GenConfig | None = None,
    *,
    seed: int = 0,
    steering=None,
    strength: float = 1.0,
    show_progress: bool = True,
    desc: str = "generate",
    check: Callable[[], None] | None = None,
) -> Generation:
    """Continue each prompt once. Deterministic for a given seed, batch size and device. ``check`` runs before each
    batch (the CLI's: raises a SIGTERM / SIGINT that a library swallowed)."""
    cfg = config or GenConfig()
    tok, model = lm.tokenizer, lm.model
    tok.padding_side = "left"
    conts: list[str] = []
    n_new = 0
    kwargs = dict(max_new_tokens=cfg.max_new_tokens, repetition_penalty=cfg.repetition_penalty,
                  pad_token_id=tok.pad_token_id)
    if cfg.temperature > 0:
        kwargs.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    ctx = steered(model, steering, strength)
    torch.manual_seed(seed)
    start = time.perf_counter()
    with ctx, torch.no_grad():
        for i in progress(range(0, len(prompts), cfg.batch_size), desc=desc, enabled=show_progress,
                          check=check, unit="batch"):
            batch = list(prompts[i : i + cfg.batch_size])
            if lm.chat is not None:  # the template carries its own special tokens
                enc = tok(lm.chat.format_all(tok, batch), return_tensors="pt", padding=True,
                          add_special_tokens=False).to(lm.device)
            else:
                enc = tok(batch, return_tensors="pt", padding=True).to(lm.device)
            out = model.generate(**enc, **kwargs)
            new = out[:, enc["input_ids"].shape[1] :]
            for row in new:
                ids = row.tolist()
                for stop in (tok.eos_token_id, tok.pad_token_id):
                    if stop is not None and stop in ids:
                        ids = ids[: ids.index(stop)]
                n_new += len(ids)
                conts.append(tok.decode(ids, skip_special_tokens=True))
    seconds = time.perf_counter() - start
    logger.info("generated %d continuations (%d tokens) in %.1f s", len(conts), n_new, seconds)
    return Generation(list(prompts), conts, seconds, n_new, seed)
