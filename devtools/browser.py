"""ComfyUI's real web frontend (the comfyui-frontend-package its requirements install), served by a real
ComfyUI server (devtools.comfy_runtime.ComfyServer) and driven in headless Debian chromium with Playwright.
Used by tests/nodes/test_browser.py and to make the template screenshots:

    python -m devtools.browser shots      # docs/templates/<name>.jpg (Fit View, 1600x1000) + workflows/<name>.jpg
                                       # + docs/templates/help_panel.jpg
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1600, "height": 1000}
PACK = "comfyui-lineas"  # the folder name ComfyUI loads the pack under (devtools.comfy_runtime.PACK_NAME)


def browser_available() -> tuple[bool, str]:
    chromium = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if not chromium:
        return False, "no chromium browser (set-up installs Debian's: apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False, "Python package playwright not installed (set-up installs it with the test extra)"
    return True, chromium


class Frontend:
    """One headless chromium page on a ComfyUI server, with a fresh profile."""

    def __init__(self, url: str, chromium: str = CHROMIUM):
        from playwright.sync_api import sync_playwright

        self.url = url
        self.profile = tempfile.mkdtemp(prefix="lineas-chromium-")
        self._pw = sync_playwright().start()
        self.context = self._pw.chromium.launch_persistent_context(
            self.profile, executable_path=chromium, headless=True, args=FLAGS, viewport=VIEWPORT)
        self.page = self.context.pages[0] if self.context.pages else self.context.new_page()
        self.console_errors: list[str] = []
        self.page.on("pageerror", lambda e: self.console_errors.append(str(e)))

    def open(self) -> None:
        self.page.goto(self.url, wait_until="domcontentloaded")
        self.page.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=120_000)
        self.page.wait_for_timeout(1500)
        self.close_dialogs()

    def close_dialogs(self) -> None:
        self.page.keyboard.press("Escape")
        self.page.wait_for_timeout(200)

    def dialogs(self) -> list[str]:
        """Text of every visible dialog (error, missing nodes, ...)."""
        return self.page.evaluate("""() => [...document.querySelectorAll('.p-dialog, [role=dialog]')]
            .filter(d => d.offsetParent !== null).map(d => d.innerText.slice(0, 500))""")

    def load_template(self, name: str, module: str = PACK) -> dict:
        """Fetch the template from ComfyUI's template route and load it as the template browser does
        (loadWorkflowTemplate: fetch /api/workflow_templates/<module>/<name>.json, then app.loadGraphData)."""
        return self.page.evaluate("""async ([module, name]) => {
            const r = await fetch(window.comfyAPI.api.api.apiURL(`/workflow_templates/${module}/${name}.json`));
            if (!r.ok) throw new Error(`template route: ${r.status}`);
            const wf = await r.json();
            await window.app.loadGraphData(wf, true, true, name);
            return wf;
        }""", [module, name])

    def graph_state(self) -> dict:
        return self.page.evaluate("""() => {
            const g = window.app.graph;
            const registered = window.LiteGraph.registered_node_types;
            return {
              serialized: g.serialize(),
              unknown: g.nodes.filter(n => !(n.type in registered)).map(n => n.type),
              links: Object.keys(g.links instanceof Map ? Object.fromEntries(g.links) : g.links).length,
            };
        }""")

    def fit_view(self) -> float:
        self.page.evaluate("() => { window.app.canvas.deselectAll?.(); }")
        self.page.evaluate("() => window.app.canvas.fitViewToSelectionAnimated()")
        self.page.wait_for_timeout(900)
        return float(self.page.evaluate("() => window.app.canvas.ds.scale"))

    def lod_scale(self) -> float:
        """The zoom below which the frontend stops drawing text (LiteGraph.Canvas.MinFontSizeForLOD / 14 px)."""
        return float(self.page.evaluate("""() => {
            const px = window.app.extensionManager.setting.get('LiteGraph.Canvas.MinFontSizeForLOD');
            return px / 14; }"""))

    def open_help(self, node_id: str) -> dict:
        """Open a node's help page the way the frontend offers it and read what it shows. Frontend 1.27
        (ComfyUI 0.3.x): the node library sidebar's help button (nodeHelp store openHelp); its store holds the
        loading state, error and base URL. Frontend 1.49 (ComfyUI 0.33): a node selected on the canvas, the
        right side panel's Info tab (the help content's state is then private: ``error`` / ``baseUrl`` are
        None and the page's H1 in the panel is what is checked)."""
        return self.page.evaluate(r"""async (nodeId) => {
            const sleep = ms => new Promise(r => setTimeout(r, ms));
            const pinia = document.querySelector('#vue-app').__vue_app__.config.globalProperties.$pinia;
            const side = pinia._s.get('rightSidePanel');
            let help = null;
            if (side) {
                const node = window.LiteGraph.createNode(nodeId);
                window.app.graph.add(node);
                window.app.canvas.selectItems([node]);
                side.openPanel('info');
                window.__lineasHelpNode = node;
            } else {
                const tabs = pinia._s.get('sidebarTab');
                if (tabs.activeSidebarTabId !== 'node-library') tabs.toggleSidebarTab('node-library');
                help = pinia._s.get('nodeHelp');
                help.openHelp(pinia._s.get('nodeDef').nodeDefsByName[nodeId]);
            }
            let h1 = '';
            for (let i = 0; i < 100 && !h1; i++) {
                await sleep(100);
                const panel = document.querySelector('.node-help-content');
                h1 = (panel && !(help && help.isLoading) && panel.querySelector('h1')?.textContent?.trim()) || '';
            }
            return {error: help?.error ?? null, baseUrl: help?.baseUrl ?? null, title: h1,
                    shown: h1 !== '' && document.body.innerText.includes(h1)};
        }""", node_id)

    def close_help(self) -> None:
        self.page.evaluate("""() => {
            const pinia = document.querySelector('#vue-app').__vue_app__.config.globalProperties.$pinia;
            const side = pinia._s.get('rightSidePanel');
            if (side) {
                side.closePanel();
                if (window.__lineasHelpNode) window.app.graph.remove(window.__lineasHelpNode);
                window.__lineasHelpNode = null;
                return;
            }
            pinia._s.get('nodeHelp').closeHelp();
            const tabs = pinia._s.get('sidebarTab');
            if (tabs.activeSidebarTabId) tabs.toggleSidebarTab(tabs.activeSidebarTabId);
        }""")

    def set_widgets(self, values: dict) -> None:
        """{node type: {widget name: value}} on every node of that type, as a user would edit them."""
        self.page.evaluate("""(values) => {
            for (const n of window.app.graph.nodes) {
              const over = values[n.type] || {};
              for (const w of n.widgets || []) if (w.name in over) { w.value = over[w.name]; w.callback?.(w.value); }
            }
            window.app.graph.setDirtyCanvas(true, true);
        }""", values)

    def run(self) -> None:
        self.page.locator('[data-testid="queue-button"]').first.click()

    def screenshot(self, path: Path, quality: int | None = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        kw = {"type": "jpeg", "quality": quality} if quality else {}
        self.page.screenshot(path=str(path), **kw)
        return path

    def close(self) -> None:
        try:
            self.context.close()
        finally:
            self._pw.stop()
            shutil.rmtree(self.profile, ignore_errors=True)


def prepare_server_base(base: Path) -> None:
    """The folders and files the templates name, on the tiny checkpoint: the checkpoint under the
    templates' name and a small style-image folder (made here)."""
    from devtools.comfy_runtime import CACHE, CKPT, make_base_dir
    from devtools.style_images import make_style_images
    from devtools.templates import CKPT as TEMPLATE_CKPT
    from devtools.tiny_checkpoint import ensure_checkpoint

    make_base_dir(base)
    ckpt = ensure_checkpoint(CACHE / CKPT)
    for name in (CKPT, TEMPLATE_CKPT):
        link = base / "models" / "checkpoints" / name
        if not link.exists():
            link.symlink_to(ckpt)
    make_style_images(base / "input" / "lineas_targets" / "illustration", n=4, seed=1)
    (base / "user" / "default").mkdir(parents=True, exist_ok=True)
    # a returning user: no first-run template browser over the canvas
    (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(
        {"Comfy.TutorialCompleted": True, "Comfy.InstalledVersion": "1.27.10", "Comfy.Minimap.Visible": False}))


# what a user would turn down to run the templates on a CPU with the tiny checkpoint
TINY = {"EmptyLatentImage": {"width": 64, "height": 64, "batch_size": 2}, "KSampler": {"steps": 2},
        "LineasTrainStyle": {"steps": 3, "resolution": 64, "batch_size": 8, "micro_batch": 4, "noise_levels": 2}}


def wait_history(server, before: set, timeout: float = 600) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        hist = server.get("/history")
        new = [v for k, v in hist.items() if k not in before]
        if new and new[0].get("status", {}).get("completed") is not None:
            st = new[0]["status"]
            if st.get("status_str") == "error" or st.get("completed"):
                return new[0]
        time.sleep(1)
    raise TimeoutError("the prompt queued by the Run button did not finish")


@contextlib.contextmanager
def running_frontend(base: Path, chromium: str):
    """The real ComfyUI server on ``base`` (see :func:`prepare_server_base`) and its frontend open in
    headless chromium; both stopped on exit."""
    import sys

    from devtools.comfy_runtime import ComfyServer

    prepare_server_base(base)
    server = ComfyServer(base, python=sys.executable)
    fe = None
    try:
        server.wait_ready()
        fe = Frontend(server.url, chromium)
        fe.open()
        yield server, fe
    finally:
        if fe is not None:
            fe.close()
        server.stop()


def shots(out_docs: Path = REPO / "docs" / "templates", out_thumbs: Path = REPO / "workflows") -> None:
    from PIL import Image

    from devtools.templates import TEMPLATES

    ok, chromium = browser_available()
    if not ok:
        raise SystemExit(chromium)
    with running_frontend(Path(tempfile.mkdtemp(prefix="lineas-shots-")), chromium) as (_, fe):
        for name in TEMPLATES:
            fe.load_template(name)
            fe.page.wait_for_timeout(500)
            scale = fe.fit_view()
            shot = fe.screenshot(out_docs / f"{name}.jpg", quality=70)
            with Image.open(shot) as im:
                thumb = im.convert("RGB")
                thumb.thumbnail((512, 320))
                thumb.save(out_thumbs / f"{name}.jpg", quality=80)
            print(f"{name}: Fit View zoom {scale:.2f} (text drawn from {fe.lod_scale():.2f}) -> {shot}")
        fe.open_help("LineasTrainStyle")
        help_shot = fe.screenshot(out_docs / "help_panel.jpg", quality=70)
        with Image.open(help_shot) as im:
            im.convert("RGB").crop((0, 0, 800, 1000)).save(help_shot, quality=70)
        print(f"node help panel -> {help_shot}")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["shots"]:
        shots()
    else:
        raise SystemExit("usage: python -m devtools.browser shots")
