"""UI-format workflows (what users drag into ComfyUI) <-> API-format prompts, using the real node
definitions (INPUT_TYPES) of a running ComfyUI to order widget values.

`python -m tests.nodes.workflow_format` (with ComfyUI at $COMFYUI_PATH) regenerates workflows/*.json
from the graphs in WORKFLOWS below."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


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


def _outputs(node_classes: dict, class_type: str) -> list[str]:
    return list(node_classes[class_type].RETURN_TYPES)


def api_to_ui(prompt: dict, node_classes: dict, positions: dict | None = None) -> dict:
    ids = {key: i + 1 for i, key in enumerate(prompt)}
    links, nodes = [], []
    out_links: dict[tuple[int, int], list[int]] = {}
    for key, node in prompt.items():
        for name, _typ, _opts, _widget in _defs(node_classes, node["class_type"]):
            v = node["inputs"].get(name)
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and v[0] in ids:
                lid = len(links) + 1
                src_type = _outputs(node_classes, prompt[v[0]]["class_type"])[v[1]]
                links.append([lid, ids[v[0]], v[1], ids[key], name, src_type])
                out_links.setdefault((ids[v[0]], v[1]), []).append(lid)
    for order, (key, node) in enumerate(prompt.items()):
        nid = ids[key]
        inputs, widgets = [], []
        for name, typ, opts, is_widget in _defs(node_classes, node["class_type"]):
            v = node["inputs"].get(name)
            linked = [lk for lk in links if lk[3] == nid and lk[4] == name]
            if linked:
                inputs.append({"name": name, "type": linked[0][5], "link": linked[0][0]})
                if is_widget:  # a widget driven by a link keeps a placeholder value
                    widgets.append(None)
            elif is_widget:
                widgets.append(v if v is not None else opts.get("default"))
                if opts.get("control_after_generate"):
                    widgets.append("fixed")
            else:
                inputs.append({"name": name, "type": typ, "link": None})
        outputs = [{"name": t, "type": t, "links": out_links.get((nid, i), []), "slot_index": i}
                   for i, t in enumerate(_outputs(node_classes, node["class_type"]))]
        pos = (positions or {}).get(key, [40 + 330 * (order % 5), 60 + 360 * (order // 5)])
        nodes.append({"id": nid, "type": node["class_type"], "pos": pos, "size": [300, 130], "flags": {},
                      "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
                      "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets})
    # links in the UI format: [id, origin_id, origin_slot, target_id, target_slot_index, type]
    ui_links = []
    for lid, src, slot, dst, name, typ in links:
        dnode = next(n for n in nodes if n["id"] == dst)
        idx = next(i for i, inp in enumerate(dnode["inputs"]) if inp["name"] == name)
        ui_links.append([lid, src, slot, dst, idx, typ])
    return {"last_node_id": len(nodes), "last_link_id": len(ui_links), "nodes": nodes, "links": ui_links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def ui_to_api(workflow: dict, node_classes: dict) -> dict:
    """The prompt ComfyUI's frontend would queue for this workflow."""
    links = {lk[0]: lk for lk in workflow["links"]}
    prompt = {}
    for n in workflow["nodes"]:
        if n.get("mode", 0) in (2, 4):  # muted / bypassed
            continue
        inputs: dict = {}
        linked = {inp["name"]: inp["link"] for inp in n.get("inputs", []) if inp.get("link") is not None}
        values = list(n.get("widgets_values") or [])
        for name, _typ, opts, is_widget in _defs(node_classes, n["type"]):
            if is_widget:
                v = values.pop(0) if values else opts.get("default")
                if opts.get("control_after_generate") and values:
                    values.pop(0)
                if name not in linked:
                    inputs[name] = v
            if name in linked:
                lk = links[linked[name]]
                inputs[name] = [str(lk[1]), lk[2]]
        prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return prompt


def _workflows() -> dict[str, tuple[dict, dict]]:
    ck = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}}
    pos = {"class_type": "CLIPTextEncode",
           "inputs": {"clip": ["ckpt", 1], "text": "a photo of a lighthouse by the sea"}}
    neg = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}}

    def ks(model, latent, seed=42):
        return {"class_type": "KSampler", "inputs": {
            "model": model, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": latent, "seed": seed,
            "steps": 20, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}

    def dec(src):
        return {"class_type": "VAEDecode", "inputs": {"samples": [src, 0], "vae": ["ckpt", 2]}}

    def apply(model, steering, strength):
        return {"class_type": "LineasApply", "inputs": {
            "model": model, "steering": steering, "strength": strength, "start_percent": 0.0, "end_percent": 1.0,
            "invert": False, "mode": "hooks"}}

    train = {
        "ckpt": ck, "pos": pos, "neg": neg,
        "src_latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 8}},
        "src_ks": ks(["ckpt", 0], ["src_latent", 0], seed=7),
        "src_dec": dec("src_ks"),
        "train": {"class_type": "LineasTrainStyle", "inputs": {
            "model": ["ckpt", 0], "vae": ["ckpt", 2], "target_folder": "lineas_targets/illustration",
            "source_folder": "", "steps": 200, "learning_rate": 0.01, "optimizer": "adamw", "sparsity": 0.0,
            "sites": "all norms", "custom_regex": "", "noise_start": 0.0, "noise_end": 1.0, "noise_levels": 8,
            "resolution": 0, "resize": "crop", "batch_size": 16, "micro_batch": 4, "seed": 0,
            "name": "my_style", "source_images": ["src_dec", 0], "conditioning": ["neg", 0]}},
        "loss": {"class_type": "PreviewImage", "inputs": {"images": ["train", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 2}},
        "base_ks": ks(["ckpt", 0], ["latent", 0]),
        "base_dec": dec("base_ks"),
        "base_save": {"class_type": "SaveImage",
                      "inputs": {"images": ["base_dec", 0], "filename_prefix": "lineas/unsteered"}},
        "apply": apply(["ckpt", 0], ["train", 0], 1.0),
        "st_ks": ks(["apply", 0], ["latent", 0]),
        "st_dec": dec("st_ks"),
        "st_save": {"class_type": "SaveImage",
                    "inputs": {"images": ["st_dec", 0], "filename_prefix": "lineas/steered"}},
    }
    sweep = {"ckpt": ck, "pos": pos, "neg": neg,
             "load": {"class_type": "LineasLoad", "inputs": {"steering_name": "my_style.safetensors"}},
             "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}}}
    for i, lam in enumerate((0.0, 0.5, 1.0, 1.5)):
        sweep[f"apply{i}"] = apply(["ckpt", 0], ["load", 0], lam)
        sweep[f"ks{i}"] = ks([f"apply{i}", 0], ["latent", 0])
        sweep[f"dec{i}"] = dec(f"ks{i}")
    sweep["batch01"] = {"class_type": "ImageBatch", "inputs": {"image1": ["dec0", 0], "image2": ["dec1", 0]}}
    sweep["batch23"] = {"class_type": "ImageBatch", "inputs": {"image1": ["dec2", 0], "image2": ["dec3", 0]}}
    sweep["batch"] = {"class_type": "ImageBatch", "inputs": {"image1": ["batch01", 0], "image2": ["batch23", 0]}}
    sweep["save"] = {"class_type": "SaveImage", "inputs": {"images": ["batch", 0], "filename_prefix": "lineas/sweep"}}
    combine = {"ckpt": ck, "pos": pos, "neg": neg,
               "load_a": {"class_type": "LineasLoad", "inputs": {"steering_name": "my_style.safetensors"}},
               "load_b": {"class_type": "LineasLoad", "inputs": {"steering_name": "other_style.safetensors"}},
               "combine": {"class_type": "LineasCombine", "inputs": {
                   "first": ["load_a", 0], "second": ["load_b", 0], "first_strength": 1.0, "second_strength": 1.0}},
               "inspect": {"class_type": "LineasInspect", "inputs": {"steering": ["combine", 0]}},
               "plot": {"class_type": "PreviewImage", "inputs": {"images": ["inspect", 0]}},
               "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
               "apply": apply(["ckpt", 0], ["combine", 0], 1.0),
               "ks": ks(["apply", 0], ["latent", 0]),
               "dec": dec("ks"),
               "save": {"class_type": "SaveImage",
                        "inputs": {"images": ["dec", 0], "filename_prefix": "lineas/combined"}}}
    return {"lineas_train_style.json": train, "lineas_strength_sweep.json": sweep, "lineas_combine.json": combine}


WORKFLOWS = _workflows


def main() -> None:
    import tempfile

    from bench.comfy_runtime import InProcessComfy

    comfy = InProcessComfy(Path(tempfile.mkdtemp(prefix="lineas-wf-")))
    for name, prompt in WORKFLOWS().items():
        ui = api_to_ui(prompt, comfy.nodes.NODE_CLASS_MAPPINGS)
        (REPO / "workflows" / name).write_text(json.dumps(ui, indent=1) + "\n")


if __name__ == "__main__":
    main()
