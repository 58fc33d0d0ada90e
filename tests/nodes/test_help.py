"""In-UI help: every node of the pack has a description, every input and output a tooltip (as the server's
/object_info reports them to the frontend), and a help page in web/docs that the frontend's node help panel
fetches (/extensions/<pack>/docs/<node>.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.comfy
REPO = Path(__file__).resolve().parents[2]


def _ours(comfy) -> dict:
    return {k: v for k, v in comfy.nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("Lineas")}


def test_every_node_input_and_output_is_documented(comfy):
    ours = _ours(comfy)
    assert len(ours) >= 7
    for node_id, cls in ours.items():
        info = cls.GET_NODE_INFO_V1()  # what /object_info sends (server.py node_info)
        assert len(info["description"]) > 40, node_id
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                opts = spec[1] if len(spec) > 1 else {}
                assert len(opts.get("tooltip") or "") > 10, f"{node_id}.{name} has no tooltip"
        tips = info["output_tooltips"]
        assert len(tips) == len(info["output"]) and all(t and len(t) > 10 for t in tips), (node_id, tips)


def test_every_node_has_a_help_page(comfy):
    import sys

    pack = next(m for k, m in sys.modules.items() if k.endswith("comfyui-lineas") and hasattr(m, "comfy_entrypoint"))
    web = (REPO / pack.WEB_DIRECTORY).resolve()
    for node_id in _ours(comfy):
        page = web / "docs" / f"{node_id}.md"
        assert page.is_file(), page
        text = page.read_text()
        assert text.startswith("# ") and len(text) > 300, node_id
    import nodes as comfy_nodes

    served = comfy_nodes.EXTENSION_WEB_DIRS.get("comfyui-lineas")  # ComfyUI serves it (via the pack's symlink)
    assert served and Path(served).resolve() == web


def test_training_seed_has_no_control_after_generate_widget(comfy):
    info = _ours(comfy)["LineasTrainStyle"].GET_NODE_INFO_V1()
    assert info["input"]["required"]["seed"][1]["control_after_generate"] is False
