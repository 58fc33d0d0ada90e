"""Session fixtures for the node tests: a real in-process ComfyUI with the pack loaded, or a skip that
says why."""

from __future__ import annotations

import pytest

from devtools.comfy_runtime import InProcessComfy, comfy_available

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
    """Small image folders made here (64 px, devtools.style_images): ``illustration`` and ``photo``, 6 each.
    Nothing outside the repo is read, so a fresh clone runs every node test."""
    from devtools.style_images import make_styles_root

    return make_styles_root(tmp_path_factory.mktemp("styles"), n=6, size=64)


@pytest.fixture(scope="session")
def styles_root(tmp_path_factory):
    """A larger made-up styles root (20 images per class, name pairs) for the diffusion recipe's tests."""
    from devtools.style_images import make_styles_root

    return make_styles_root(tmp_path_factory.mktemp("styles-root"), n=20, size=64, seed=1)
