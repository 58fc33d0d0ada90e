"""Inputs, forwards and small models shared by the engine tests."""

from __future__ import annotations

import torch
from torch import nn


def token_batch(n: int, low: int, high: int, length: int = 12, seed: int = 0, pad_left: bool = True) -> dict:
    """n random token sequences of varying length, left-padded, with an attention mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, high, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    lengths = torch.randint(length // 2, length + 1, (n,), generator=g)
    for i, k in enumerate(lengths.tolist()):
        if pad_left:
            mask[i, : length - k] = 0
            ids[i, : length - k] = 0
        else:
            mask[i, k:] = 0
            ids[i, k:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def lm_forward(model):
    return lambda b: model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])


def unet_batch(n: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 8, 8, generator=g) * scale + shift
    x[:, 0] += shift * torch.linspace(-1, 1, 8)  # a spatial pattern, not only a global offset
    return {"sample": x, "timestep": torch.full((n,), 10), "encoder_hidden_states": torch.randn(n, 3, 16, generator=g)}


def unet_forward(model):
    return lambda b: model(b["sample"], b["timestep"], encoder_hidden_states=b["encoder_hidden_states"])


class Chain(nn.Module):
    """Two affine sites in a row: the second site's input is the first site's output, so a map at the
    first site shifts what the second sees (what separates end-to-end from layer-wise fitting)."""

    def __init__(self, d: int = 8):
        super().__init__()
        self.first = nn.Linear(d, d)
        self.second = nn.Linear(d, d)
        with torch.no_grad():
            self.first.weight.copy_(torch.eye(d) + 0.1 * torch.randn(d, d))
            self.first.bias.zero_()
            self.second.weight.copy_(torch.eye(d) + 0.1 * torch.randn(d, d))
            self.second.bias.zero_()

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)) * 2)
