"""Steering files in ComfyUI's folders: the "lineas" folder type (models/lineas and output/lineas, and
any `lineas:` entry of extra_model_paths.yaml), safe names, atomic saves."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from ..lineas_engine import (
    LineasError,
    SteeringRecord,
    load_record,
    record_bytes,
    save_or_rescue,
    save_record,
    write_numbered,
)

FOLDER = "lineas"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_. -]{0,100}")
# names Windows maps to devices whatever the extension (CON.x, nul.safetensors, COM1...)
_RESERVED = re.compile(r"(?i)(con|prn|aux|nul|com[0-9\u00b9\u00b2\u00b3]|lpt[0-9\u00b9\u00b2\u00b3]|conin\$|conout\$)")


def register_folder() -> None:
    """Called once when ComfyUI loads the pack (not at import)."""
    import folder_paths

    paths = [os.path.join(folder_paths.models_dir, FOLDER), os.path.join(folder_paths.get_output_directory(), FOLDER)]
    if FOLDER in folder_paths.folder_names_and_paths:
        known, exts = folder_paths.folder_names_and_paths[FOLDER]
        folder_paths.folder_names_and_paths[FOLDER] = (known + [p for p in paths if p not in known],
                                                       exts | {".safetensors"})
    else:
        folder_paths.folder_names_and_paths[FOLDER] = (paths, {".safetensors"})


def list_files() -> list[str]:
    import folder_paths

    register_folder()
    return folder_paths.get_filename_list(FOLDER)


def check_name(name: str) -> str:
    name = (name or "").strip()
    if name.endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    if not _NAME.fullmatch(name) or ".." in name or name.endswith((".", " ")):
        raise LineasError(f"steering name {name!r} is not allowed: use letters, digits, '_', '-', '.', spaces "
                          "(no folders, no '..', not ending in '.' or a space), e.g. my_style")
    if _RESERVED.fullmatch(name.split(".")[0].strip()):
        raise LineasError(f"steering name {name!r} is a reserved device name on Windows; choose another, "
                          "e.g. my_style")
    return name


def save_ref(record: SteeringRecord, name: str) -> Path:
    """Save into output/lineas/<name>_NNNNN.safetensors (never overwrites, also under concurrent saves of
    the same name: the final step is an exclusive link, and a taken number moves on to the next; atomic).
    When that fails (disk full, a read-only output folder...), the steering is kept in
    ``$LINEAS_CACHE/unsaved/`` and the error says where: a long training is never lost to a failed save."""
    import folder_paths

    name = check_name(name)
    out_dir = Path(folder_paths.get_output_directory()) / FOLDER
    named = dataclasses.replace(record, name=name)
    return save_or_rescue(lambda _: _save_numbered(named, name, out_dir), out_dir / f"{name}.safetensors",
                          rescue=lambda spot: save_record(spot, named, overwrite=False))


def _save_numbered(record: SteeringRecord, name: str, out_dir: Path) -> Path:
    return write_numbered(out_dir, name, record_bytes(record))


def load_ref(filename: str) -> SteeringRecord:
    import folder_paths

    register_folder()
    path = folder_paths.get_full_path(FOLDER, filename)
    if path is None:
        raise LineasError(f"steering file {filename!r} not found in the lineas folders "
                          f"({', '.join(folder_paths.get_folder_paths(FOLDER))})")
    return dataclasses.replace(load_record(path), name=Path(filename).stem)  # the file the user picked
