"""Every template in ComfyUI's real web frontend (comfyui-frontend-package, installed by ComfyUI's
requirements), served by a real ComfyUI server, in headless Debian chromium driven by Playwright: open it
from the template route, every widget value equals the file's, no missing node, no error dialog, readable
at Fit View in a 1600x1000 window, run it with the tiny checkpoint through the Run button; a screenshot of
each is saved in .artifacts/browser/. Skipped (with the reason) only where no browser can be installed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from devtools.browser import TINY, browser_available, running_frontend, wait_history
from devtools.comfy_runtime import comfy_available
from devtools.templates import TEMPLATES

pytestmark = [pytest.mark.comfy, pytest.mark.slow_server]
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / ".artifacts" / "browser"
_BROWSER, _CHROMIUM = browser_available()


@pytest.fixture(scope="module")
def frontend(tmp_path_factory):
    ok, why = comfy_available()
    if not ok:
        pytest.skip(why)
    if not _BROWSER:
        pytest.skip(_CHROMIUM)
    with running_frontend(tmp_path_factory.mktemp("browser-base"), _CHROMIUM) as (server, fe):
        yield server, fe


def test_templates_are_offered_with_thumbnails(frontend):
    server, _ = frontend
    info = server.get("/object_info")
    assert info["LineasApply"]["input"]["required"]["steering"][0] == "LINEAS_STEERING"
    bad = server.post("/prompt", {"prompt": {"1": {"class_type": "LineasLoad",
                                                    "inputs": {"steering_name": "nope.safetensors"}}}})
    assert bad.get("http_error") == 400  # validation names the missing file before anything runs
    offered = server.get("/workflow_templates")
    assert set(offered.get("comfyui-lineas", [])) == set(TEMPLATES)
    for name in TEMPLATES:  # the template browser's card image (mediaSubtype "jpg")
        assert (REPO / "workflows" / f"{name}.jpg").stat().st_size > 2000, name


def test_help_pages_show_in_the_node_help_panel(frontend):
    import urllib.request

    server, fe = frontend
    info = server.get("/object_info")
    ours = [k for k, v in info.items() if v.get("category") == "lineas"]
    assert len(ours) >= 7
    for node in ours:
        assert info[node]["description"], node
        # the frontend's NodeHelpService fetches /extensions/<pack>/docs/<node>.md for a custom node, <pack>
        # taken from the node's python_module ("custom_nodes.<pack>")
        source, pack = info[node]["python_module"].split(".", 1)
        assert source == "custom_nodes"
        md = urllib.request.urlopen(f"{server.url}/extensions/{pack}/docs/{node}.md", timeout=10).read()
        assert md.decode().startswith("# "), node
        panel = fe.open_help(node)  # the frontend fetches, renders and shows it
        assert panel["error"] is None, (node, panel)
        assert panel["baseUrl"] in (None, f"/extensions/{pack}/docs/"), (node, panel)  # None: frontend >= 1.49
        assert panel["shown"] and panel["title"] == md.decode().splitlines()[0][2:].strip(), (node, panel)
        if node == "LineasTrainStyle":
            fe.screenshot(ARTIFACTS / "help_panel_LineasTrainStyle.png")
        fe.close_help()


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_template_loads_right_and_runs_in_the_real_frontend(frontend, name):
    server, fe = frontend
    lineas_models = server.base / "models" / "lineas"
    if name in ("lineas_strength_sweep", "lineas_combine"):  # they load the file the training template made
        made = sorted((server.base / "output" / "lineas").glob("my_style_*.safetensors"))
        if not made:
            pytest.skip("needs the steering saved by lineas_train_style (run the whole module)")
        for target in ("my_style.safetensors", "other_style.safetensors"):
            shutil.copy(made[-1], lineas_models / target)
        fe.page.evaluate("() => window.app.refreshComboInNodes()")
    wf = json.loads((REPO / "workflows" / f"{name}.json").read_text())
    fe.load_template(name)
    fe.page.wait_for_timeout(800)
    state = fe.graph_state()
    assert not state["unknown"], f"missing node types: {state['unknown']}"
    assert not fe.dialogs(), f"dialog after loading: {fe.dialogs()}"
    loaded = {n["id"]: n for n in state["serialized"]["nodes"]}
    for node in wf["nodes"]:
        got = loaded[node["id"]].get("widgets_values", [])
        assert got == node["widgets_values"], (node["type"], node.get("title"), got, node["widgets_values"])
    assert state["links"] == len(wf["links"])
    scale = fe.fit_view()
    fe.screenshot(ARTIFACTS / f"{name}_fit_view.png")
    assert scale >= fe.lod_scale(), f"Fit View zoom {scale:.2f} is below the zoom at which text is drawn"

    fe.set_widgets(TINY)
    before = set(server.get("/history"))
    fe.run()
    result = wait_history(server, before)
    fe.page.wait_for_timeout(500)
    fe.screenshot(ARTIFACTS / f"{name}_after_run.png")
    assert result["status"].get("status_str") == "success", str(result["status"].get("messages"))[-1500:]
    assert not fe.dialogs(), f"dialog after running: {fe.dialogs()}"
    saved = [im for o in result["outputs"].values() for im in o.get("images", []) if im["type"] == "output"]
    assert saved, f"{name} saved no image"
    if name == "lineas_combine":  # the LoRA export ran in the frontend too
        assert list((server.base / "output" / "loras").glob("combined_lora_*.safetensors"))
    if name in ("lineas_train_style", "lineas_style_phrase"):
        prefix = "my_style" if name == "lineas_train_style" else "phrase_style"
        assert list((server.base / "output" / "lineas").glob(f"{prefix}_*.safetensors"))


def test_train_node_added_from_the_library_keeps_its_seed(frontend):
    """A LineasTrainStyle created in the frontend has no control-after-generate widget (a Run must not
    retrain with a new seed), and its widget values are the ones the templates store."""
    server, fe = frontend
    got = fe.page.evaluate("""() => {
        const n = window.LiteGraph.createNode("LineasTrainStyle");
        window.app.graph.add(n);
        const out = {names: n.widgets.map(w => w.name), values: n.serialize().widgets_values};
        window.app.graph.remove(n);
        return out;
    }""")
    assert "control_after_generate" not in got["names"]
    assert got["names"][got["names"].index("seed") + 1] != "control_after_generate"
    spec = server.get("/object_info/LineasTrainStyle")["LineasTrainStyle"]["input"]
    widgets = [k for sec in ("required", "optional") for k, v in spec.get(sec, {}).items()
               if isinstance(v[0], list) or v[0] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")]
    assert got["names"] == widgets and len(got["values"]) == len(widgets)
