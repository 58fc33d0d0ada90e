"""The node pack's workflow templates (workflows/*.json, which ComfyUI offers in its template browser):
built here from API-style graphs, laid out left to right by data flow, one group and one MarkdownNote
per step, with widget values in the order and number the real frontend builds them (widget inputs in
definition order; an INT input with a control-after-generate widget also stores that widget's value, as
KSampler stores [seed, "fixed", ...]). The browser test (tests/nodes/test_browser.py) checks every file
against ComfyUI's own frontend.

    python -m devtools.templates   # with ComfyUI at $COMFYUI_PATH (BUILT_WITH: 0.3.64): rewrites workflows/*.json
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: the ComfyUI the committed templates are built with (the oldest the pack supports): newer trees give core nodes
#: such as PreviewImage declared outputs that the files then list; the browser test loads the files in both
BUILT_WITH = "0.3.64"
OUT = REPO / "workflows"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
GAP = 24           # between nodes in a column and between columns
PAD = 14           # group padding
TITLE = 70         # group title band, plus the first node's title bar
NODE_TITLE = 30    # a node's title bar sits above its pos; its size is the body only
COLORS = ["#3f789e", "#8A8", "#a1309b", "#b58b2a", "#88A"]


@dataclass
class N:
    key: str
    class_type: str
    inputs: dict = field(default_factory=dict)   # widget values and links ["key", slot]
    title: str | None = None
    width: int = 300
    height: int | None = None


def _spec(defs, class_type):
    it = defs[class_type].INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, spec in (it.get(section) or {}).items():
            typ = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, typ, opts))
    return out


def _is_widget(typ, opts) -> bool:
    return (isinstance(typ, list) or typ in WIDGET_TYPES) and not opts.get("forceInput")


def _has_control(name, typ, opts) -> bool:
    if typ != "INT":
        return False
    cag = opts.get("control_after_generate")
    return bool(cag) if cag is not None else name in ("seed", "noise_seed")


def _default(typ, opts):
    if "default" in opts:
        return opts["default"]
    if isinstance(typ, list):
        return typ[0] if typ else ""
    if typ == "COMBO":
        return (opts.get("options") or [""])[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[typ]


def _outputs(defs, class_type) -> list[tuple[str, str]]:
    cls = defs[class_type]
    types = list(getattr(cls, "RETURN_TYPES", ()))
    names = list(getattr(cls, "RETURN_NAMES", None) or types)
    return list(zip(names, types))


def _height(defs, n: N) -> int:
    if n.height:
        return n.height
    if n.class_type == "MarkdownNote":
        return 160
    spec = _spec(defs, n.class_type)
    sockets = sum(1 for name, typ, opts in spec if not _is_widget(typ, opts))
    widgets = sum(1 + _has_control(name, typ, opts) for name, typ, opts in spec if _is_widget(typ, opts))
    multiline = sum(1 for name, typ, opts in spec if typ == "STRING" and opts.get("multiline"))
    h = 30 + 22 * max(sockets, len(_outputs(defs, n.class_type))) + 24 * widgets + 70 * multiline + 10
    if n.class_type in ("SaveImage", "PreviewImage"):
        h = max(h, 270)
    if n.class_type == "PreviewAny":
        h = 180
    return h


def build(defs, steps: list[dict], name: str = "lineas") -> dict:
    """``steps``: [{"title", "note" (markdown), "columns": [[N, ...], ...]}], left to right."""
    nodes, links, groups = [], [], []
    keys: dict[str, int] = {}
    all_nodes = [n for s in steps for col in s["columns"] for n in col]
    for i, n in enumerate(all_nodes, start=1):
        keys[n.key] = i
    # links first: [id, from, from_slot, to, to_slot, type]
    in_slots: dict[int, list[dict]] = {}
    out_links: dict[tuple[int, int], list[int]] = {}
    for n in all_nodes:
        if n.class_type == "MarkdownNote":
            continue
        slots = []
        for name, typ, opts in _spec(defs, n.class_type):
            slot = {"name": name, "type": "COMBO" if isinstance(typ, list) else typ, "link": None}
            if _is_widget(typ, opts):
                slot["widget"] = {"name": name}
            v = n.inputs.get(name)
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
                src = next(m for m in all_nodes if m.key == v[0])
                lid = len(links) + 1
                ltype = _outputs(defs, src.class_type)[v[1]][1]
                links.append([lid, keys[v[0]], v[1], keys[n.key], len(slots), ltype])
                slot["link"] = lid
                out_links.setdefault((keys[v[0]], v[1]), []).append(lid)
            slots.append(slot)
        in_slots[keys[n.key]] = slots
    x = 0
    order = 0
    for gi, step in enumerate(steps):
        gx = x
        y0 = TITLE
        col_x = gx + PAD
        col_bottoms = []
        width = sum(max(m.width for m in col) for col in step["columns"]) + GAP * (len(step["columns"]) - 1)
        note_h = step.get("note_height", 120)
        nodes.append({"id": 1000 + gi, "type": "MarkdownNote", "pos": [gx + PAD, y0], "size": [width, note_h],
                      "flags": {}, "order": 0, "mode": 0, "inputs": [], "outputs": [], "properties": {},
                      "widgets_values": [step["note"]], "color": "#432", "bgcolor": "#653"})
        y_start = y0 + note_h + GAP + NODE_TITLE
        for col in step["columns"]:
            cw = max(m.width for m in col)
            y = y_start
            for n in col:
                nid = keys[n.key]
                h = _height(defs, n)
                order += 1
                spec = _spec(defs, n.class_type)
                widgets = []
                for name, typ, opts in spec:
                    if not _is_widget(typ, opts):
                        continue
                    v = n.inputs.get(name, _default(typ, opts))
                    if isinstance(v, list):
                        raise ValueError(f"{n.key}.{name}: widget inputs are not linked in templates")
                    widgets.append(v)
                    if _has_control(name, typ, opts):
                        widgets.append("fixed")
                outs = []
                for slot, (oname, otype) in enumerate(_outputs(defs, n.class_type)):
                    o = {"name": oname, "type": otype, "links": out_links.get((nid, slot), [])}
                    outs.append(o)
                node = {"id": nid, "type": n.class_type, "pos": [col_x, y], "size": [cw, h - NODE_TITLE], "flags": {},
                        "order": order, "mode": 0, "inputs": in_slots[nid], "outputs": outs,
                        "properties": {"Node name for S&R": n.class_type}, "widgets_values": widgets}
                if n.title:
                    node["title"] = n.title
                nodes.append(node)
                y += h + GAP
            col_bottoms.append(y)
            col_x += cw + GAP
        gw = width + 2 * PAD
        gh = max(col_bottoms) - GAP - NODE_TITLE + PAD
        groups.append({"id": gi + 1, "title": step["title"], "bounding": [gx, 0, gw, gh],
                       "color": COLORS[gi % len(COLORS)], "font_size": 24, "flags": {}})
        x = gx + gw + GAP
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-lineas/{name}")), "revision": 0,
            "last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": groups, "config": {}, "extra": {"ds": {"scale": 0.6, "offset": [0, 0]}},
            "version": 0.4}


# -- the four templates ---------------------------------------------------------------------------------------
CKPT = "v1-5-pruned-emaonly.safetensors"
PROMPT = "a cottage by a lake in the mountains, morning light"
STYLE = "flat vector illustration, bold outlines, pastel colours"
NEG = "blurry, lowres"


def _model_nodes(prompt: str = PROMPT, batch: int = 4) -> list[N]:
    return [N("ckpt", "CheckpointLoaderSimple", {"ckpt_name": CKPT}, width=260, height=100),
            N("pos", "CLIPTextEncode", {"clip": ["ckpt", 1], "text": prompt}, title="Prompt", width=260, height=150),
            N("neg", "CLIPTextEncode", {"clip": ["ckpt", 1], "text": NEG}, title="Negative prompt", width=260,
              height=130),
            N("empty", "EmptyLatentImage", {"width": 512, "height": 512, "batch_size": batch}, width=260)]


def _sampler(key, model, latent="empty", pos="pos", seed=42, title=None, width=260) -> N:
    return N(key, "KSampler", {"model": model, "positive": [pos, 0], "negative": ["neg", 0],
                               "latent_image": [latent, 0], "seed": seed, "steps": 20, "cfg": 7.0,
                               "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0},
             title=title, width=width)


def _decode(key, samples, title=None, width=260) -> N:
    return N(key, "VAEDecode", {"samples": [samples, 0], "vae": ["ckpt", 2]}, title=title, width=width)


def _train(**over) -> N:
    inputs = {"model": ["ckpt", 0], "vae": ["ckpt", 2], "target_folder": "lineas_targets/illustration",
              "source_folder": "", "name": "my_style", "seed": 0, **over}
    return N("train", "LineasTrainStyle", inputs, width=310)


def train_style() -> list[dict]:
    return [
        {"title": "1 · Source images",
         "note": "## 1 · Source images\nPick your **SD1.5 checkpoint**. The sampler draws 4 images for the prompt: "
                 "these are the **source** images, what the model makes *now*. Training learns to move "
                 "them towards your style.",
         "columns": [_model_nodes(), [_sampler("ks", ["ckpt", 0], title="KSampler (source images)"),
                                       _decode("dec", "ks")]]},
        {"title": "2 · Train",
         "note": "## 2 · Train\nPut 8-40 **style images** in `ComfyUI/input/lineas_targets/illustration` (or type "
                 "another folder). Press **Run**. The steering is saved as `output/lineas/my_style_00001"
                 ".safetensors`; the summary names the file. Copy it to `models/lineas` for the other templates. "
                 "The model is trained under the prompt's conditioning, as it samples.",
         "columns": [[_train(source_images=["dec", 0], conditioning=["pos", 0])],
                     [N("loss", "PreviewImage", {"images": ["train", 1]}, title="Loss curve", width=250),
                      N("summary", "PreviewAny", {"source": ["train", 2]}, title="Summary (saved file)",
                        width=250)]]},
        {"title": "3 · Compare",
         "note": "## 3 · Compare\nSame seed with and without the steering. Images are saved in `output/lineas/`"
                 " (`unsteered_*`, `steered_*`). Change **strength** to dial the style.",
         "columns": [[N("apply", "LineasApply", {"model": ["ckpt", 0], "steering": ["train", 0]}, width=270),
                      _sampler("ks2", ["apply", 0], title="KSampler (steered)"), _decode("dec2", "ks2")],
                     [N("save0", "SaveImage", {"images": ["dec", 0], "filename_prefix": "lineas/unsteered"},
                        title="Unsteered", width=250),
                      N("save1", "SaveImage", {"images": ["dec2", 0], "filename_prefix": "lineas/steered"},
                        title="Steered (strength 1)", width=250)]]},
    ]


STRENGTHS = (0.0, 0.5, 1.0, 1.5)


def strength_sweep() -> list[dict]:
    chains = []
    for i, lam in enumerate(STRENGTHS):
        chains.append([
            N(f"apply{i}", "LineasApply", {"model": ["ckpt", 0], "steering": ["load", 0], "strength": lam},
              title=f"Apply: strength {lam:g}", width=230),
            _sampler(f"ks{i}", [f"apply{i}", 0], title=f"KSampler: strength {lam:g}"),
            _decode(f"dec{i}", f"ks{i}", title=f"Decode: strength {lam:g}"),
            N(f"save{i}", "SaveImage", {"images": [f"dec{i}", 0], "filename_prefix": f"lineas/strength_{lam:g}"},
              title=f"strength {lam:g}", width=230)])
    for c in chains:
        c[1].width = c[2].width = 230
    return [
        {"title": "1 · Model",
         "note": "## 1 · Model\nThe checkpoint the steering was trained on, and your prompt.",
         "columns": [_model_nodes(batch=1)]},
        {"title": "2 · Steering",
         "note": "## 2 · Steering\nFiles in `models/lineas` or `output/lineas` (press **R** to refresh).",
         "columns": [[N("load", "LineasLoad", {"steering_name": "my_style.safetensors"}, width=260),
                      N("info", "PreviewAny", {"source": ["load", 1]}, title="Steering info", width=260)]]},
        {"title": "3 · Strength sweep, same seed",
         "note": "## 3 · Sweep\nOne column per strength, same seed: 0 = the model alone, 1 = the trained style, "
                 "1.5 = exaggerated. Saved as `output/lineas/strength_<s>_*.png`.",
         "note_height": 120,
         "columns": chains},
    ]


def combine() -> list[dict]:
    return [
        {"title": "1 · Model", "note": "## 1 · Model\nThe checkpoint both steerings were trained on.",
         "columns": [_model_nodes(batch=1)]},
        {"title": "2 · Combine",
         "note": "## 2 · Combine\nTwo files from `models/lineas`. The result is the second applied after the "
                 "first (exact), saved to `output/lineas/combined_*.safetensors`.",
         "columns": [[N("a", "LineasLoad", {"steering_name": "my_style.safetensors"}, title="First steering",
                        width=270),
                      N("b", "LineasLoad", {"steering_name": "other_style.safetensors"}, title="Second steering",
                        width=270),
                      N("comb", "LineasCombine", {"first": ["a", 0], "second": ["b", 0], "first_strength": 1.0,
                                                  "second_strength": 0.5}, width=270),
                      N("savest", "LineasSave", {"steering": ["comb", 0], "name": "combined"}, width=270)],
                     [N("inspect", "LineasInspect", {"steering": ["comb", 0]}, width=260),
                      N("plot", "PreviewImage", {"images": ["inspect", 0]}, title="Where it acts", width=260),
                      N("text", "PreviewAny", {"source": ["inspect", 1]}, title="Per-site text", width=260)]]},
        {"title": "3 · Generate, share as a LoRA",
         "note": "## 3 · Generate and share\nThe combined steering applied to the model (`output/lineas/"
                 "combined_*.png`), and saved as a LoRA for ComfyUI's own *Load LoRA (model only)*: "
                 "`output/loras/combined_lora_00001.safetensors`.",
         "columns": [[N("apply", "LineasApply", {"model": ["ckpt", 0], "steering": ["comb", 0]}, width=270),
                      _sampler("ks", ["apply", 0]), _decode("dec", "ks")],
                     [N("save", "SaveImage", {"images": ["dec", 0], "filename_prefix": "lineas/combined"},
                        title="Combined style", width=260),
                      N("lora", "LineasSaveLora", {"model": ["ckpt", 0], "steering": ["comb", 0],
                                                   "name": "combined_lora", "thumbnail": ["dec", 0]}, width=260),
                      N("lora_left", "PreviewAny", {"source": ["lora", 1]}, title="Layers not in the LoRA",
                        width=260, height=130)]]},
    ]


def style_phrase() -> list[dict]:
    styled = f"{PROMPT}, {STYLE}"
    model = _model_nodes()
    model.insert(2, N("pos_style", "CLIPTextEncode", {"clip": ["ckpt", 1], "text": styled},
                      title="Prompt + style phrase", width=260, height=150))
    return [
        {"title": "1 · Two prompts",
         "note": "## 1 · No images needed\nWrite a prompt, and the same prompt plus a **style phrase**. The "
                 "model draws both: plain = source, styled = target.",
         "columns": [model]},
        {"title": "2 · Draw both",
         "note": "## 2 · Source and target\nSame seeds for both; only the style phrase differs.",
         "columns": [[_sampler("ks_src", ["ckpt", 0], title="KSampler (plain prompt)", width=240),
                      _sampler("ks_tgt", ["ckpt", 0], pos="pos_style", title="KSampler (styled prompt)",
                               width=240)],
                     [_decode("dec_src", "ks_src", title="Decode (source)", width=170),
                      _decode("dec_tgt", "ks_tgt", title="Decode (target)", width=170)]]},
        {"title": "3 · Train",
         "note": "## 3 · Train\nLearns the style phrase's effect as a steering, saved as "
                 "`output/lineas/phrase_style_00001.safetensors` (see the summary).",
         "columns": [[_train(target_folder="", name="phrase_style", source_images=["dec_src", 0],
                             target_images=["dec_tgt", 0], conditioning=["pos", 0])],
                     [N("loss", "PreviewImage", {"images": ["train", 1]}, title="Loss curve", width=200),
                      N("summary", "PreviewAny", {"source": ["train", 2]}, title="Summary (saved file)",
                        width=200)]]},
        {"title": "4 · Use it",
         "note": "## 4 · Use it\nThe plain prompt, a new seed, with the steering: the style without the words.",
         "columns": [[N("apply", "LineasApply", {"model": ["ckpt", 0], "steering": ["train", 0]}, width=250),
                      _sampler("ks_new", ["apply", 0], seed=7, title="KSampler (steered, new seed)", width=250),
                      _decode("dec_new", "ks_new", width=250),
                      N("save", "SaveImage", {"images": ["dec_new", 0], "filename_prefix": "lineas/phrase_steered"},
                        title="Steered", width=250)]]},
    ]


TEMPLATES = {"lineas_train_style": train_style, "lineas_strength_sweep": strength_sweep,
             "lineas_combine": combine, "lineas_style_phrase": style_phrase}


def write_all(defs, out: Path = OUT) -> list[Path]:
    paths = []
    for name, fn in TEMPLATES.items():
        wf = build(defs, fn(), name)
        p = out / f"{name}.json"
        p.write_text(json.dumps(wf, indent=1) + "\n")
        paths.append(p)
    return paths


def main() -> None:
    import tempfile

    from devtools.comfy_runtime import InProcessComfy, comfy_version

    if comfy_version() != BUILT_WITH:
        raise SystemExit(f"the templates are built with ComfyUI {BUILT_WITH}; $COMFYUI_PATH is {comfy_version()}: "
                         f"point it at a {BUILT_WITH} tree (or change BUILT_WITH and check the files in the browser)")
    comfy = InProcessComfy(Path(tempfile.mkdtemp(prefix="lineas-templates-")), tiny_checkpoint=False)
    for p in write_all(comfy.nodes.NODE_CLASS_MAPPINGS):
        print(f"wrote {p.relative_to(REPO)}")


if __name__ == "__main__":
    main()
