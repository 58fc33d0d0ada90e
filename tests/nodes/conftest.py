"""Session fixtures for the node tests: a real in-process ComfyUI with the pack loaded, or a skip that
says why."""

from __future__ import annotations

import pytest

from bench.comfy_runtime import InProcessComfy, comfy_available

_OK, _WHY = comfy_available()


def pytest_collection_modifyitems(config, items):
    if _OK:
        return
    skip = pytest.mark.skip(reason=_WHY)
    for item in items:
        if "tests/nodes/" in str(item.fspath).replace("\\", "/") and "comfy" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    if not _OK:
        pytest.skip(_WHY)
    return InProcessComfy(tmp_path_factory.mktemp("comfy-base"))


@pytest.fixture(scope="session")
def style_dirs(tmp_path_factory):
    """Small real image folders (64 px copies of the shared style images) in ComfyUI-readable files."""
    from pathlib import Path

    from PIL import Image

    shared = Path(__file__).resolve().parents[3] / "shared" / "data" / "styles"
    if not shared.is_dir():
        pytest.skip(f"style images not found at {shared}")
    out = tmp_path_factory.mktemp("styles")
    for style, n in (("illustration", 6), ("photo", 6)):
        d = out / style
        d.mkdir()
        for f in sorted((shared / style).iterdir())[:n]:
            with Image.open(f) as im:
                im.convert("RGB").resize((64, 64)).save(d / (f.stem + ".png"))
    return out
