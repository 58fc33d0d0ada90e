"""Every workflow in workflows/ is a valid UI-format graph of known nodes and executes on a real
ComfyUI: in-process, and (one of them) through the HTTP server with the pack loaded from an extra
custom_nodes folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from devtools.comfy_runtime import ComfyServer, comfy_available
from tests.nodes.workflow_format import FRONTEND_ONLY, ui_to_api

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
OUR_NODES = {"LineasTrainStyle", "LineasApply", "LineasLoad", "LineasSave", "LineasCombine", "LineasInspect",
             "LineasSaveLora"}


def test_four_workflows_exist_and_are_ui_format():
    assert {p.name for p in WORKFLOWS} == {"lineas_train_style.json", "lineas_strength_sweep.json",
                                           "lineas_combine.json", "lineas_style_phrase.json"}
    for p in WORKFLOWS:
        wf = json.loads(p.read_text())
        assert {"nodes", "links", "last_node_id", "last_link_id", "version"} <= set(wf), p.name
        ids = {n["id"] for n in wf["nodes"]}
        for lid, src, _slot, dst, _idx, _typ in wf["links"]:
            assert src in ids and dst in ids, (p.name, lid)
        assert OUR_NODES & {n["type"] for n in wf["nodes"]}, p.name


@pytest.mark.comfy
def test_committed_templates_are_what_the_builder_makes(comfy):
    """workflows/*.json are built by `python -m devtools.templates` from the nodes' own definitions: a file
    edited by hand, or a node whose inputs changed without rebuilding, shows here (rebuild with that command)."""
    from devtools.comfy_runtime import comfy_version
    from devtools.templates import BUILT_WITH, TEMPLATES, build

    if comfy_version() != BUILT_WITH:
        pytest.skip(f"the templates are built with ComfyUI {BUILT_WITH} (devtools.templates.BUILT_WITH), this is "
                    f"{comfy_version()}: its core nodes declare other outputs; the browser test loads the files here")
    for name, steps in TEMPLATES.items():
        built = json.loads(json.dumps(build(comfy.nodes.NODE_CLASS_MAPPINGS, steps(), name)))
        assert json.loads((REPO / "workflows" / f"{name}.json").read_text()) == built, (
            f"workflows/{name}.json differs from what devtools.templates builds: run python -m devtools.templates")


def _shrink(prompt: dict, style_dir: Path) -> dict:
    """Make a user workflow cheap enough for this CPU: the tiny checkpoint, 64 px, few steps."""
    for node in prompt.values():
        i = node["inputs"]
        ct = node["class_type"]
        if ct == "CheckpointLoaderSimple":
            i["ckpt_name"] = "tiny_sd15.safetensors"
        if ct == "EmptyLatentImage":
            i.update(width=64, height=64, batch_size=min(i["batch_size"], 2))
        if ct == "KSampler":
            i["steps"] = 2
        if ct == "LineasTrainStyle":
            i.update(steps=3, resolution=64, batch_size=8, micro_batch=4, noise_levels=2)
            if "target_images" not in i:  # the style-phrase template generates its targets
                i["target_folder"] = str(style_dir)
    return prompt


@pytest.fixture
def steering_files(comfy, style_dirs):
    """The two files the load/combine workflows name, trained here on the tiny model."""
    from devtools.graphs import base_graph, train_node

    lineas_models = comfy.base / "models" / "lineas"
    if not (lineas_models / "other_style.safetensors").exists():
        for name, style in (("my_style", "illustration"), ("other_style", "photo")):
            g = base_graph(seed=3)
            g["train"] = train_node(str(style_dirs / style), source=["dec", 0], steps=3, name=f"wf_{name}")
            g["show"] = {"class_type": "PreviewImage", "inputs": {"images": ["train", 1]}}
            comfy.run(g)
            made = sorted((comfy.output_dir / "lineas").glob(f"wf_{name}_*.safetensors"))[-1]
            shutil.copy(made, lineas_models / f"{name}.safetensors")
    return lineas_models


@pytest.mark.comfy
@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_executes_in_process(comfy, style_dirs, steering_files, path):
    nodes = comfy.nodes.NODE_CLASS_MAPPINGS
    wf = json.loads(path.read_text())
    unknown = {n["type"] for n in wf["nodes"]} - set(nodes) - FRONTEND_ONLY  # notes are the frontend's own
    assert not unknown, f"{path.name} uses node types that are neither ours nor ComfyUI built-ins: {unknown}"
    prompt = _shrink(ui_to_api(wf, nodes), style_dirs / "illustration")
    outputs = comfy.run(prompt)
    saved = [im for o in outputs.values() for im in o.get("images", []) if im["type"] == "output"]
    assert saved, f"{path.name} saved no image"


@pytest.mark.comfy
@pytest.mark.slow_server
@pytest.mark.slow  # opt-in: tests/nodes/test_browser.py runs every template on the same server, in the frontend
def test_http_server_loads_pack_and_runs_a_workflow(tmp_path, style_dirs):
    ok, why = comfy_available()
    if not ok:
        pytest.skip(why)
    import sys

    server = ComfyServer(tmp_path / "server-base", python=sys.executable)
    try:
        server.wait_ready()
        info = server.get("/object_info")
        assert OUR_NODES <= set(info)
        assert info["LineasApply"]["input"]["required"]["steering"][0] == "LINEAS_STEERING"
        templates = server.get("/workflow_templates")
        ours = [v for k, v in templates.items() if "lineas" in k]
        assert ours and {"lineas_train_style", "lineas_strength_sweep", "lineas_combine"} <= set(ours[0])
        # the workflow a user starts with: generate sources, train from a folder, compare
        wf = json.loads((REPO / "workflows" / "lineas_train_style.json").read_text())
        from tests.nodes.workflow_format import ui_to_api as convert

        defs = {name: _ObjectInfoNode(spec) for name, spec in info.items()}
        prompt = _shrink(convert(wf, defs), style_dirs / "illustration")
        outputs = server.run(prompt)
        saved = [im for o in outputs.values() for im in o.get("images", []) if im["type"] == "output"]
        assert len(saved) == 4  # 2 unsteered + 2 steered
        assert list((tmp_path / "server-base" / "output" / "lineas").glob("my_style_*.safetensors"))
        bad = server.post("/prompt", {"prompt": {"1": {"class_type": "LineasLoad",
                                                        "inputs": {"steering_name": "nope.safetensors"}}}})
        assert bad.get("http_error") == 400
    finally:
        server.stop()


class _ObjectInfoNode:
    """Adapter: INPUT_TYPES / RETURN_TYPES from an /object_info entry."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.RETURN_TYPES = tuple(spec["output"])

    def INPUT_TYPES(self):  # noqa: N802 - ComfyUI's name
        return {k: v for k, v in self.spec["input"].items() if k in ("required", "optional")}
