"""Chat formatting: instruct models are used through their chat template, so a steering for them is trained,
prompted and evaluated the same way. A text becomes the user turn (after an optional system prompt) followed
by the generation prompt, i.e. exactly what the model reads before it answers; training pools only over
the text's own tokens (the template's tokens are the same in every sample and would dilute the pooled
activations). Perplexity stays on the plain neutral text (fluency of the language model itself), in both
modes, so its numbers remain comparable.

The choice is recorded in the steering file (``extra.chat``) and `generate` / `eval` follow it."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from typing import Sequence

import torch

from lineas_engine import LineasError

__all__ = ["ChatFormat", "has_chat_template", "resolve_chat", "chat_from_meta", "encode_texts"]

logger = logging.getLogger(__name__)

CONTENT_MASK = "content_mask"  # pooling mask over the text's own tokens (TrainConfig.mask_key in chat mode)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def template_hash(tokenizer) -> str:
    return hashlib.sha256(str(tokenizer.chat_template).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ChatFormat:
    """``system``: optional system prompt (``None``: the template's own default, if any)."""

    system: str | None = None
    template_hash: str | None = None

    def messages(self, text: str) -> list[dict]:
        sys_msg = [{"role": "system", "content": self.system}] if self.system is not None else []
        return sys_msg + [{"role": "user", "content": text}]

    def format(self, tokenizer, text: str) -> str:
        return tokenizer.apply_chat_template(self.messages(text), tokenize=False, add_generation_prompt=True)

    def format_all(self, tokenizer, texts: Sequence[str]) -> list[str]:
        return [self.format(tokenizer, t) for t in texts]

    def to_dict(self) -> dict:
        return {"enabled": True, **asdict(self)}


def resolve_chat(tokenizer, chat: bool | None, system: str | None, *, model: str = "the model") -> ChatFormat | None:
    """The user's ``--chat/--no-chat`` (``None``: on when the tokenizer has a chat template) and ``--system``."""
    has = has_chat_template(tokenizer)
    if chat and not has:
        raise LineasError(f"--chat: the tokenizer of {model!r} has no chat template; drop --chat (raw text is used)")
    if system is not None and (chat is False or not has):
        why = "--no-chat was given" if chat is False else f"{model!r} has no chat template"
        raise LineasError(f"--system needs chat formatting but {why}; drop --system")
    if chat is False or not has:
        return None
    return ChatFormat(system=system, template_hash=template_hash(tokenizer))


def chat_from_meta(tokenizer, extra: dict, chat: bool | None, system: str | None,
                   *, model: str = "the model") -> ChatFormat | None:
    """Formatting for generate / eval under a steering: the one recorded in its file unless the user
    overrides it explicitly (then a warning, since the steering was learnt on the other formatting)."""
    rec = extra.get("chat")
    if rec is None:  # files from before chat support: raw text
        rec = {"enabled": False}
    if chat is None and system is None:
        if not rec.get("enabled"):
            return None
        if not has_chat_template(tokenizer):
            raise LineasError(f"the steering was trained with a chat template but {model!r} has none; "
                              "use the model it was trained on, or pass --no-chat")
        if rec.get("template_hash") and rec["template_hash"] != template_hash(tokenizer):
            logger.warning("the tokenizer's chat template differs from the one the steering was trained with")
        return ChatFormat(system=rec.get("system"), template_hash=template_hash(tokenizer))
    if chat is False:
        fmt = resolve_chat(tokenizer, chat, system, model=model)  # raw text (--system is then an error)
    else:
        fmt = resolve_chat(tokenizer, chat, system if system is not None else rec.get("system"), model=model)
    if fmt is not None and not rec.get("enabled"):  # a raw-text steering used in chat: it carries over
        logger.info("chat formatting for a steering trained on raw text")
    elif (fmt is not None) != bool(rec.get("enabled")) or (fmt and fmt.system != rec.get("system")):
        logger.warning("chat formatting differs from the one this steering was trained with (%s)", rec)
    return fmt


def _content_mask(tokenizer, formatted: list[str], texts: Sequence[str], offsets: torch.Tensor,
                  attention: torch.Tensor) -> torch.Tensor:
    """1 on the tokens whose characters lie inside the text's own span of the formatted string."""
    mask = torch.zeros_like(attention)
    for i, (f, t) in enumerate(zip(formatted, texts)):
        start = f.rfind(t)
        if start < 0 or not t:
            mask[i] = attention[i]
            continue
        end = start + len(t)
        lo, hi = offsets[i, :, 0], offsets[i, :, 1]
        inside = (hi > start) & (lo < end) & (hi > lo) & attention[i].bool()
        mask[i] = inside.to(mask.dtype) if bool(inside.any()) else attention[i]
    return mask


def encode_texts(tokenizer, texts: Sequence[str], chat: ChatFormat | None, max_length: int = 64) -> dict:
    """Sample dict for training (left padding): raw texts, or chat-formatted ones with a ``content_mask``
    for pooling. ``max_length`` counts the text's own tokens; the template's are added to it."""
    texts = list(texts)
    if chat is None:
        enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    # keep at most max_length tokens of each text, then format (truncating the formatted string would cut
    # off the generation prompt)
    ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    short = [tokenizer.decode(x, skip_special_tokens=True).strip() or t for x, t in zip(ids, texts)]
    formatted = chat.format_all(tokenizer, short)
    enc = tokenizer(formatted, return_tensors="pt", padding=True, add_special_tokens=False,
                    return_offsets_mapping=True)
    mask = _content_mask(tokenizer, formatted, short, enc["offset_mapping"], enc["attention_mask"])
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], CONTENT_MASK: mask}
