"""The shared style images: two folders (photo, illustration), centre-cropped and resized to a small
square; a deterministic train/test split by name group (``foo-1.webp`` / ``foo-2.webp`` are near-duplicate
before/after pairs and always land in the same split); flip + random-crop augmentation."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

STYLES = ("photo", "illustration")  # label 0, 1
IMAGE_SUFFIXES = {".webp", ".png", ".jpg", ".jpeg"}


def default_styles_root() -> Path:
    env = os.environ.get("LINEAS_STYLES")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "styles"


def group_of(name: str) -> str:
    """``api_bria_eraser-2.webp`` -> ``api_bria_eraser``: the stem without a trailing ``-N``."""
    return re.sub(r"-\d+$", "", Path(name).stem)


@dataclass(frozen=True)
class Item:
    path: Path
    label: int  # index into STYLES

    @property
    def name(self) -> str:
        return f"{STYLES[self.label]}/{self.path.name}"


def list_items(root: Path, limit_per_class: int = 0) -> list[Item]:
    """All images of both folders, sorted by name; ``limit_per_class`` keeps the first N of each (tests)."""
    items = []
    for label, style in enumerate(STYLES):
        folder = root / style
        if not folder.is_dir():
            raise FileNotFoundError(f"style folder not found: {folder}")
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if limit_per_class:
            files = files[:limit_per_class]
        items += [Item(f, label) for f in files]
    return items


def split_items(items: list[Item], test_fraction: float = 0.25, seed: int = 0) -> tuple[list[Item], list[Item]]:
    """Groups (by ``group_of``, across both folders) are shuffled with ``seed`` and moved to the test split
    while every class they contain stays at or under ``round(test_fraction * class size)``; roughly
    stratified, deterministic, and no group is ever split."""
    groups: dict[str, list[Item]] = {}
    for it in items:
        groups.setdefault(group_of(it.path.name), []).append(it)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    quota = {c: round(test_fraction * sum(it.label == c for it in items)) for c in range(len(STYLES))}
    taken = dict.fromkeys(quota, 0)
    test_keys = set()
    for k in keys:
        need = {c: sum(it.label == c for it in groups[k]) for c in quota}
        if all(taken[c] + need[c] <= quota[c] for c in quota):
            test_keys.add(k)
            for c in quota:
                taken[c] += need[c]
    train = [it for it in items if group_of(it.path.name) not in test_keys]
    test = [it for it in items if group_of(it.path.name) in test_keys]
    return train, test


def fingerprint(items: list[Item]) -> str:
    """Hash of names, labels and file sizes: a cached stage is stale when the folders change."""
    rows = [[it.name, it.label, it.path.stat().st_size] for it in items]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def load_image(path: Path, size: int) -> np.ndarray:
    """Centre square crop, resized (Lanczos) to ``size``; uint8 [size, size, 3] RGB."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.Resampling.LANCZOS)
        return np.asarray(im, dtype=np.uint8).copy()


def load_tensor(items: list[Item], size: int) -> torch.Tensor:
    """Float [N, 3, size, size] in 0..1."""
    arr = np.stack([load_image(it.path, size) for it in items]) if items else np.zeros((0, size, size, 3), np.uint8)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255)


def labels(items: list[Item]) -> torch.Tensor:
    return torch.tensor([it.label for it in items], dtype=torch.long)


def augment(big: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Random ``size`` crop of each (larger) image and a random horizontal flip; [N, 3, S, S] -> [N, 3, size, size].
    With ``big`` already at ``size`` only the flip is random."""
    n, _, s, _ = big.shape
    off = torch.randint(0, s - size + 1, (n, 2), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out = torch.stack([big[i, :, off[i, 0]:off[i, 0] + size, off[i, 1]:off[i, 1] + size] for i in range(n)])
    out[flip] = out[flip].flip(-1)
    return out


@dataclass
class StyleData:
    """Both splits at the training size (``x``: [N, 3, size, size]) and at the augmentation size (``big``)."""

    train: list[Item]
    test: list[Item]
    x_train: torch.Tensor
    x_test: torch.Tensor
    big_train: torch.Tensor

    @property
    def y_train(self) -> torch.Tensor:
        return labels(self.train)

    @property
    def y_test(self) -> torch.Tensor:
        return labels(self.test)

    def summary(self) -> dict:
        def counts(items):
            return {s: sum(it.label == c for it in items) for c, s in enumerate(STYLES)}

        return {"train": counts(self.train), "test": counts(self.test),
                "test_names": [it.name for it in self.test]}


def load_styles(root: Path, size: int = 64, aug_size: int = 72, test_fraction: float = 0.25, seed: int = 0,
                limit_per_class: int = 0) -> StyleData:
    items = list_items(root, limit_per_class)
    train, test = split_items(items, test_fraction, seed)
    data = StyleData(train, test, load_tensor(train, size), load_tensor(test, size), load_tensor(train, aug_size))
    log.info("styles: %s", {k: v for k, v in data.summary().items() if k != "test_names"})
    return data
