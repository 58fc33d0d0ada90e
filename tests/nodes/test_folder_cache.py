"""A folder input's cache key follows its files: an unchanged folder is a cache hit (nothing retrains),
adding / replacing an image retrains (nodes/_folder_key.py, the train node's fingerprint_inputs)."""

from __future__ import annotations

import copy
import os
import shutil

import pytest

from devtools.graphs import base_graph, train_node

pytestmark = pytest.mark.comfy


def _key_fn():
    import importlib
    import sys

    pack = next(k for k, m in sys.modules.items() if k.endswith("comfyui-lineas") and hasattr(m, "comfy_entrypoint"))
    return importlib.import_module(f"{pack}.nodes._folder_key").folder_key


def test_key_follows_names_sizes_and_mtimes(comfy, style_dirs, tmp_path):
    key = _key_fn()
    d = tmp_path / "imgs"
    shutil.copytree(style_dirs / "illustration", d)
    k0 = key(str(d), None)
    assert key(str(d), None) == k0 and key("imgs", str(tmp_path)) == k0  # relative to the input folder
    (d / "notes.txt").write_text("not an image")
    assert key(str(d), None) == k0
    first = sorted(d.glob("*.png"))[0]
    st = first.stat()
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    k1 = key(str(d), None)
    assert k1 != k0
    shutil.copy(first, d / "extra.png")
    k2 = key(str(d), None)
    assert k2 not in (k0, k1)
    (d / "extra.png").rename(d / "extra2.png")
    assert key(str(d), None) not in (k0, k1, k2)
    assert key(str(tmp_path / "missing"), None) != key(str(d), None)


def test_same_folder_is_cached_and_a_changed_image_retrains(comfy, style_dirs, tmp_path):
    from PIL import Image

    d = tmp_path / "targets"
    shutil.copytree(style_dirs / "illustration", d)
    g = base_graph(seed=41)
    g["train"] = train_node(str(d), source=["dec", 0], steps=2, name="cachetest")
    g["show"] = {"class_type": "PreviewImage", "inputs": {"images": ["train", 1]}}
    out_dir = comfy.output_dir / "lineas"

    def made() -> int:
        return len(list(out_dir.glob("cachetest_*.safetensors")))

    def run():  # a fresh prompt each time, as the server parses one per request (ComfyUI stores
        comfy.run(copy.deepcopy(g))  # the fingerprint in the prompt's node dict, execution.py:72-83)

    run()
    assert made() == 1
    run()  # same folder, same files: ComfyUI's cache, no training
    assert made() == 1
    img = sorted(d.glob("*.png"))[0]
    with Image.open(img) as im:
        im.transpose(Image.FLIP_LEFT_RIGHT).save(img)  # a user replaces an image
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))  # coarse-mtime file systems
    run()
    assert made() == 2
    run()  # and cached again
    assert made() == 2
