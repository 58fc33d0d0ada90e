"""Cache key of an image-folder input: it follows the folder's files (names, sizes, modification times),
so adding, removing or replacing an image makes ComfyUI run the node again, and an unchanged folder is a
cache hit. Used by the train node's ``fingerprint_inputs`` (ComfyUI's V3 name for IS_CHANGED,
execution.py:47-88: only the node's constant inputs are passed, links are not)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ._images import EXTENSIONS


def folder_key(folder: str, input_dir: str | None) -> str:
    """A short hash of the image files in ``folder`` (resolved as the train node resolves it). A missing
    or unreadable folder gets a key of its own: the node's execute then reports the error to the user."""
    folder = (folder or "").strip()
    if not folder:
        return "no folder"
    p = Path(os.path.expanduser(folder))
    if not p.is_absolute() and input_dir:
        p = Path(input_dir) / p
    h = hashlib.sha256(str(p).encode())
    try:
        entries = sorted(os.scandir(p), key=lambda e: e.name)
    except OSError as e:
        return f"unreadable {p} ({type(e).__name__})"
    for e in entries:
        if not e.name.lower().endswith(EXTENSIONS):
            continue
        try:
            st = e.stat()
        except OSError:
            continue
        if e.is_file():
            h.update(f"\0{e.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def folders_key(input_dir: str | None, *folders: str) -> str:
    return "|".join(folder_key(f, input_dir) for f in folders)
