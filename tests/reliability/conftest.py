"""Fixtures for the reliability tests: the sidecar's tiny real models and text files, a 3-layer twin of
the tiny Llama (same width, other structure), and the node pack's helper modules."""

from __future__ import annotations

import pytest

from tests.sidecar import conftest as _sidecar
from tests.sidecar.conftest import CLEAN, NEUTRAL, PROMPTS, TOXIC, _save, _tokenizer  # noqa: F401

tiny_llama_dir = _sidecar.tiny_llama_dir  # the same session fixtures as the sidecar tests
texts = _sidecar.texts


@pytest.fixture(scope="session")
def tiny_llama3_dir(tmp_path_factory):
    """Like ``tiny_llama_dir`` (same width, same sites 0 and 1) but with 3 layers."""
    return _sidecar.tiny_llama_folder(tmp_path_factory.mktemp("tiny-llama3"), layers=3, seed=1)


@pytest.fixture(scope="session")
def trained(tiny_llama_dir, tmp_path_factory):
    """A valid steering ``S`` for the tiny Llama ``T``, trained once through the CLI."""
    from llm_sidecar.cli import main

    d = tmp_path_factory.mktemp("trained")
    for name, lines in (("toxic.txt", TOXIC), ("clean.txt", CLEAN)):
        (d / name).write_text("\n".join(lines) + "\n")
    out = d / "S.safetensors"
    assert main(["train", "--model", tiny_llama_dir, "--source", str(d / "toxic.txt"), "--target",
                 str(d / "clean.txt"), "--out", str(out), "--steps", "10", "--lr", "0.05", "--optimizer", "adam",
                 "--batch-size", "8", "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="session")
def pack():
    """The node pack as a package (its helpers import ComfyUI's ``comfy_api``): the one ComfyUI loaded if
    the node tests ran in this session, else imported here from the repo folder."""
    import importlib
    import importlib.util
    import sys

    from devtools.comfy_runtime import REPO, comfy_available, import_comfy

    ok, why = comfy_available()
    if not ok:
        pytest.skip(why)
    for k, m in list(sys.modules.items()):
        if k.endswith("comfyui-lineas") and hasattr(m, "comfy_entrypoint"):
            return m
    import_comfy()
    name = "lineas_pack_reliability"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    importlib.import_module(f"{name}.nodes._images")
    importlib.import_module(f"{name}.nodes._files")
    return sys.modules[name]
