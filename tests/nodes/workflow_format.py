"""UI-format workflows (what users drag into ComfyUI) <-> API-format prompts, using the real node
definitions (INPUT_TYPES) of a running ComfyUI to order widget values.

The templates in workflows/ are built by `python -m devtools.templates`, and the real frontend is the judge
of their widget values (tests/nodes/test_browser.py); this converter only turns them into prompts for the
in-process runs. Frontend-only nodes (MarkdownNote, Note) are skipped; an INT widget gets a
control-after-generate value after it as the frontend does (control_after_generate, or the legacy rule:
inputs named seed / noise_seed)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FRONTEND_ONLY = {"MarkdownNote", "Note"}


def _defs(node_classes: dict, class_type: str) -> list[tuple[str, object, dict, bool]]:
    """(name, type, options, is_widget) for every input of a node, in definition order."""
    it = node_classes[class_type].INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, spec in (it.get(section) or {}).items():
            typ = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            is_widget = isinstance(typ, list) or typ in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
            out.append((name, typ, opts, is_widget))
    return out


def ui_to_api(workflow: dict, node_classes: dict) -> dict:
    """The prompt ComfyUI's frontend would queue for this workflow."""
    links = {lk[0]: lk for lk in workflow["links"]}
    prompt = {}
    for n in workflow["nodes"]:
        if n.get("mode", 0) in (2, 4) or n["type"] in FRONTEND_ONLY:  # muted / bypassed / notes
            continue
        inputs: dict = {}
        linked = {inp["name"]: inp["link"] for inp in n.get("inputs", []) if inp.get("link") is not None}
        values = list(n.get("widgets_values") or [])
        for name, _typ, opts, is_widget in _defs(node_classes, n["type"]):
            if is_widget:
                v = values.pop(0) if values else opts.get("default")
                if _typ == "INT" and opts.get("control_after_generate", name in ("seed", "noise_seed")) and values:
                    values.pop(0)
                if name not in linked:
                    inputs[name] = v
            if name in linked:
                lk = links[linked[name]]
                inputs[name] = [str(lk[1]), lk[2]]
        prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return prompt
