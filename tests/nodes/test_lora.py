"""LinEAS Save as LoRA: the foldable part of a steering as a file that ComfyUI's stock
LoraLoaderModelOnly applies; same sampled latents as LinEAS Apply in fold mode; modelspec metadata;
sites that cannot be expressed are named, never dropped."""

from __future__ import annotations

import base64
import io
import json

import pytest
import torch

from devtools.graphs import base_graph, train_node

pytestmark = pytest.mark.comfy


def _pack():
    import sys

    mods = [m for k, m in sys.modules.items() if k.endswith("comfyui-lineas") and hasattr(m, "comfy_entrypoint")]
    assert mods, "pack module not loaded by ComfyUI"
    return mods[0]


@pytest.fixture(scope="module")
def setup(comfy, style_dirs):
    """A steering trained through the graph, exported through the LineasSaveLora node in the same graph."""
    import folder_paths

    folder_paths.add_model_folder_path("loras", str(comfy.output_dir / "loras"))  # as ComfyUI's main.py:47 does
    g = base_graph(seed=17)
    g["train"] = train_node(str(style_dirs / "illustration"), source=["dec", 0], steps=6, name="lora_src",
                            learning_rate=0.05)
    g["lora"] = {"class_type": "LineasSaveLora", "inputs": {"model": ["ckpt", 0], "steering": ["train", 0],
                                                           "name": "lora_test", "strength": 1.0,
                                                           "thumbnail": ["dec", 0]}}
    out = comfy.run(g)
    text = out["lora"]["text"][0]
    lora_name = text.split("saved loras/")[1].split(" ")[0]
    steering_file = sorted((comfy.output_dir / "lineas").glob("lora_src_*.safetensors"))[-1].name
    import nodes

    with torch.inference_mode():
        model, clip, _ = nodes.CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")[:3]
        pos = nodes.CLIPTextEncode().encode(clip, "a picture")[0]
        neg = nodes.CLIPTextEncode().encode(clip, "")[0]
    ref = _pack().nodes._files.load_ref(steering_file)
    return {"text": text, "lora_name": lora_name, "model": model, "pos": pos, "neg": neg, "ref": ref}


def _sample(model, pos, neg, seed=3):
    import nodes

    latent = {"samples": torch.zeros(2, 4, 8, 8)}
    with torch.inference_mode():
        return nodes.common_ksampler(model, seed, 3, 5.0, "euler", "normal", pos, neg, latent)[0]["samples"].clone()


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_stock_lora_loader_equals_fold_mode(setup, strength):
    import nodes

    model, pos, neg, ref = setup["model"], setup["pos"], setup["neg"], setup["ref"]
    apply = _pack().nodes.apply.LineasApply.execute
    folded = _sample(apply(model, ref, strength, 0.0, 1.0, False, "fold").result[0], pos, neg)
    lora = nodes.LoraLoaderModelOnly().load_lora_model_only(model, setup["lora_name"], strength)[0]
    via_lora = _sample(lora, pos, neg)
    base = _sample(model, pos, neg)
    assert _rel(folded, base) > 1e-4  # the steering acts
    assert _rel(via_lora, folded) <= 1e-5


def test_file_has_only_keys_comfyui_loads_and_modelspec_metadata(setup, comfy):
    import comfy.lora
    import folder_paths
    from PIL import Image
    from safetensors import safe_open

    path = folder_paths.get_full_path_or_raise("loras", setup["lora_name"])
    with safe_open(path, "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
        sd = {k: f.get_tensor(k) for k in keys}
    assert keys and all(k.startswith("diffusion_model.") and k.endswith((".diff", ".diff_b")) for k in keys)
    key_map = comfy.lora.model_lora_keys_unet(setup["model"].model, {})
    patches = comfy.lora.load_lora(sd, key_map)
    assert len(patches) == len(keys)  # every key is read by ComfyUI's own loader
    assert meta["modelspec.sai_model_spec"] == "1.0.0"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.title"] == setup["lora_name"].removesuffix(".safetensors")
    head, data = meta["modelspec.thumbnail"].split(",", 1)
    assert head == "data:image/jpeg;base64"
    with Image.open(io.BytesIO(base64.b64decode(data))) as im:
        assert im.format == "JPEG" and max(im.size) <= 128
    info = json.loads(meta["lineas"])
    assert info["not_expressed"] == {} and info["architecture"] == "SD15"
    assert "not expressed: none" in setup["text"]


def test_sites_that_cannot_be_folded_are_named(setup, comfy):
    from lineas_engine import SiteSpec, Steering

    pack = _pack()
    ref = setup["ref"]
    norm = "input_blocks.1.0.in_layers.0"  # GroupNorm: foldable
    act = "input_blocks.1.0.in_layers.1"   # SiLU: no weight to fold into
    steering = Steering({norm: SiteSpec(320, 1), act: SiteSpec(320, 1)})
    with torch.no_grad():
        steering.weight(norm).fill_(1.2)
        steering.weight(act).fill_(0.9)
    two = pack.lineas_engine.SteeringRecord(steering=steering, fingerprint=ref.fingerprint, name="partly")
    out = pack.nodes.lora_node.LineasSaveLora.execute(setup["model"], two, "partly", 1.0)
    lora_name, not_expressed = out.result
    assert act in not_expressed and norm not in not_expressed and "no per-channel weight" in not_expressed
    import folder_paths
    from safetensors import safe_open

    with safe_open(folder_paths.get_full_path_or_raise("loras", lora_name), "pt") as f:
        assert sorted(f.keys()) == [f"diffusion_model.{norm}.diff", f"diffusion_model.{norm}.diff_b"]
        assert act in json.loads(f.metadata()["lineas"])["not_expressed"]


def test_bad_name_is_refused_and_writes_nothing(setup, comfy):
    pack = _pack()
    before = sorted((comfy.output_dir / "loras").iterdir())
    with pytest.raises(pack.lineas_engine.LineasError, match="is not allowed"):  # the pack's own copy of the class
        pack.nodes.lora_node.LineasSaveLora.execute(setup["model"], setup["ref"], "../escape", 1.0)
    assert sorted((comfy.output_dir / "loras").iterdir()) == before


def test_export_reads_unpatched_weights_while_another_clone_is_loaded(setup, comfy):
    """ComfyUI keeps the last sampled clone's weight patches applied in place: an export made then must
    still start from the model's own weights (the result is compared with hooks, which do not depend on
    the weights' current values)."""
    import folder_paths

    import nodes

    model, pos, neg, ref = setup["model"], setup["pos"], setup["neg"], setup["ref"]
    pack = _pack()
    apply = pack.nodes.apply.LineasApply.execute
    _sample(apply(model, ref, 1.0, 0.0, 1.0, False, "fold").result[0], pos, neg)  # patches now live in place
    site = next(iter(ref.steering.sites))
    key = f"diffusion_model.{site}.weight"
    live = model.get_model_object("diffusion_model").get_submodule(site).weight
    assert key in model.backup and not torch.equal(live, model.backup[key].weight)  # the case is exercised
    lora_name, _ = pack.nodes.lora_node.LineasSaveLora.execute(model, ref, "after_live", 0.5).result
    assert folder_paths.get_full_path("loras", lora_name)
    hooked = _sample(apply(model, ref, 0.5, 0.0, 1.0, False, "hooks").result[0], pos, neg)
    via_lora = _sample(nodes.LoraLoaderModelOnly().load_lora_model_only(model, lora_name, 1.0)[0], pos, neg)
    assert _rel(via_lora, hooked) <= 1e-5
