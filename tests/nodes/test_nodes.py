"""The node pack against a real ComfyUI (in-process executor), with the tiny SD1.5-format checkpoint."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from devtools.comfy_runtime import PromptError
from devtools.graphs import apply_node, base_graph, sampler, save_image, train_node

pytestmark = pytest.mark.comfy

NODE_IDS = ["LineasTrainStyle", "LineasApply", "LineasLoad", "LineasSave", "LineasCombine", "LineasInspect"]


def _pngs(comfy, outputs: dict, node: str) -> list[np.ndarray]:
    from PIL import Image

    return [np.asarray(Image.open(comfy.output_dir / im.get("subfolder", "") / im["filename"]))
            for im in outputs[node]["images"]]


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def trained(comfy, style_dirs):
    """One training run through the graph; returns the saved steering's file name."""
    g = base_graph(seed=11)
    g["train"] = train_node(str(style_dirs / "illustration"), source=["dec", 0], steps=6, name="fixture")
    g["show"] = {"class_type": "PreviewImage", "inputs": {"images": ["train", 1]}}
    out_dir = comfy.output_dir / "lineas"
    before = set(out_dir.glob("*.safetensors")) if out_dir.exists() else set()
    comfy.run(g)
    new = sorted(set((comfy.output_dir / "lineas").glob("fixture_*.safetensors")) - before)
    assert len(new) == 1
    return new[0].name


def test_pack_loads_from_extra_custom_nodes_folder(comfy):
    import folder_paths

    for node_id in NODE_IDS:
        assert node_id in comfy.nodes.NODE_CLASS_MAPPINGS, node_id
    assert any(p.endswith("lineas") for p in folder_paths.get_folder_paths("lineas"))


def test_strength_zero_is_bit_identical_and_strength_one_changes(comfy, trained):
    g = base_graph(seed=5)
    g["load"] = {"class_type": "LineasLoad", "inputs": {"steering_name": trained}}
    g["save_base"] = save_image(["dec", 0], "s0base")
    for lam, tag in ((0.0, "zero"), (1.0, "one")):
        g[f"ap_{tag}"] = apply_node(["ckpt", 0], ["load", 0], lam)
        g[f"ks_{tag}"] = sampler(f"ap_{tag}", "empty", seed=5)
        g[f"dec_{tag}"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"ks_{tag}", 0], "vae": ["ckpt", 2]}}
        g[f"save_{tag}"] = save_image([f"dec_{tag}", 0], f"s0{tag}")
    out = comfy.run(g)
    base = _pngs(comfy, out, "save_base")
    assert _same(_pngs(comfy, out, "save_zero"), base)
    assert not _same(_pngs(comfy, out, "save_one"), base)


def test_lineas_training_lowers_the_ot_loss_on_the_whole_source_set(comfy, trained):
    import folder_paths

    from lineas_engine import load_steering

    _, meta = load_steering(folder_paths.get_full_path_or_raise("lineas", trained))
    assert meta.training["method"] == "lineas" and meta.training["steps"] == 6
    assert meta.training["eval_after"] < meta.training["eval_before"]


def test_layerwise_method_fits_the_baseline_and_records_its_ot_loss(comfy, style_dirs):
    """The closed-form baseline moves every site and reports the same end-to-end OT loss as LinEAS does
    (before / after); on this random tiny model it may well raise it: the engine's tests show why."""
    from lineas_engine import load_steering

    g = base_graph(seed=13)
    g["train"] = train_node(str(style_dirs / "illustration"), source=["dec", 0], name="lw", method="layer-wise")
    g["show"] = {"class_type": "PreviewImage", "inputs": {"images": ["train", 1]}}
    comfy.run(g)
    path = sorted((comfy.output_dir / "lineas").glob("lw_*.safetensors"))[-1]
    steering, meta = load_steering(path)
    assert meta.training["method"] == "layer-wise" and meta.training["steps"] == 0
    before, after = meta.training["eval_before"], meta.training["eval_after"]
    assert np.isfinite(before) and np.isfinite(after) and after != before
    moved = [s for s in steering.specs if not (torch.equal(steering.weight(s), torch.ones_like(steering.weight(s)))
                                                and torch.equal(steering.bias(s), torch.zeros_like(steering.bias(s))))]
    assert len(moved) == len(steering.specs)


@pytest.mark.parametrize("steered_first", [True, False])
def test_unsteered_branch_unaffected_in_either_order(comfy, trained, steered_first):
    ref = comfy.run({**base_graph(seed=21), "save": save_image(["dec", 0], "ref")})
    reference = _pngs(comfy, ref, "save")
    g = base_graph(seed=21)
    g["load"] = {"class_type": "LineasLoad", "inputs": {"steering_name": trained}}
    g["ap"] = apply_node(["ckpt", 0], ["load", 0], 1.0)
    # force the order: the second sampler's latent depends on the first sampler's output (times 0)
    g["ks_steer"] = sampler("ap", "empty", seed=21)
    first, second = ("ks_steer", "ks") if steered_first else ("ks", "ks_steer")
    g["zero"] = {"class_type": "LatentMultiply", "inputs": {"samples": [first, 0], "multiplier": 0.0}}
    g[second]["inputs"]["latent_image"] = ["zero", 0]
    g["dec_steer"] = {"class_type": "VAEDecode", "inputs": {"samples": ["ks_steer", 0], "vae": ["ckpt", 2]}}
    g["save_base"] = save_image(["dec", 0], "mixbase")
    g["save_steer"] = save_image(["dec_steer", 0], "mixsteer")
    out = comfy.run(g)
    assert _same(_pngs(comfy, out, "save_base"), reference)
    assert not _same(_pngs(comfy, out, "save_steer"), reference)


def test_save_then_load_gives_identical_images(comfy, trained):
    g = base_graph(seed=8)
    g["load"] = {"class_type": "LineasLoad", "inputs": {"steering_name": trained}}
    g["save_st"] = {"class_type": "LineasSave", "inputs": {"steering": ["load", 0], "name": "resaved"}}
    out = comfy.run(g)
    resaved = out["save_st"]["text"][0].removeprefix("saved ")
    images = {}
    for name in (trained, resaved):
        h = base_graph(seed=8)
        h["load"] = {"class_type": "LineasLoad", "inputs": {"steering_name": name}}
        h["ap"] = apply_node(["ckpt", 0], ["load", 0], 0.8)
        h["ks"] = sampler("ap", "empty", seed=8)
        h["save"] = save_image(["dec", 0], f"rt_{name[:6]}")
        images[name] = _pngs(comfy, comfy.run(h), "save")
    assert _same(images[trained], images[resaved])


# -- numeric checks on latents, calling ComfyUI's own sampler from Python ---------------------------------
@pytest.fixture(scope="module")
def loaded(comfy, trained):
    import nodes

    pack = comfy_pack()
    with torch.inference_mode():
        model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")[:3]
        pos = nodes.CLIPTextEncode().encode(clip, "a picture")[0]
        neg = nodes.CLIPTextEncode().encode(clip, "")[0]
    ref = pack.nodes._files.load_ref(trained)
    return model, pos, neg, ref, pack


def comfy_pack():
    import sys

    mods = [m for k, m in sys.modules.items() if k.endswith("comfyui-lineas") and hasattr(m, "comfy_entrypoint")]
    assert mods, "pack module not loaded by ComfyUI"
    return mods[0]


def _rel(a, b) -> float:
    """Max abs difference relative to the latents' scale (a random UNet's latents reach ~200, where fp32
    rounding over a 3-step sampling is ~1e-6 relative)."""
    return float((a - b).abs().max() / b.abs().max())


def _sample(model, pos, neg, seed=3):
    import nodes

    latent = {"samples": torch.zeros(2, 4, 8, 8)}
    with torch.inference_mode():
        return nodes.common_ksampler(model, seed, 3, 5.0, "euler", "normal", pos, neg, latent)[0]["samples"].clone()


def test_invert_after_apply_equals_base(loaded):
    model, pos, neg, ref, pack = loaded
    apply = pack.nodes.apply.LineasApply.execute
    base = _sample(model, pos, neg)
    m1 = apply(model, ref, 1.0, 0.0, 1.0, False, "hooks").result[0]
    steered = _sample(m1, pos, neg)
    m2 = apply(m1, ref, 1.0, 0.0, 1.0, True, "hooks").result[0]
    back = _sample(m2, pos, neg)
    assert _rel(steered, base) > 1e-3
    assert _rel(back, base) <= 1e-5
    assert torch.equal(_sample(model, pos, neg), base)  # the input model was never modified


def test_folded_equals_hooked(loaded):
    model, pos, neg, ref, pack = loaded
    apply = pack.nodes.apply.LineasApply.execute
    hooked = _sample(apply(model, ref, 0.7, 0.0, 1.0, False, "hooks").result[0], pos, neg)
    folded = _sample(apply(model, ref, 0.7, 0.0, 1.0, False, "fold").result[0], pos, neg)
    assert _rel(folded, hooked) <= 1e-5
    assert torch.equal(_sample(model, pos, neg), _sample(model, pos, neg))


def test_two_applies_stack_and_equal_combine(loaded):
    model, pos, neg, ref, pack = loaded
    apply = pack.nodes.apply.LineasApply.execute
    combine = pack.nodes.combine.LineasCombine.execute
    stacked = _sample(apply(apply(model, ref, 0.5, 0.0, 1.0, False, "hooks").result[0], ref, 0.5, 0.0, 1.0, False,
                            "hooks").result[0], pos, neg)
    combined = combine(ref, ref, 0.5, 0.5).result[0]
    one = _sample(apply(model, combined, 1.0, 0.0, 1.0, False, "hooks").result[0], pos, neg)
    single = _sample(apply(model, ref, 0.5, 0.0, 1.0, False, "hooks").result[0], pos, neg)
    assert _rel(stacked, one) <= 1e-5
    assert _rel(stacked, single) > 1e-4  # the second apply acts


def test_inspect_outputs_plot_and_text(loaded):
    _, _, _, ref, pack = loaded
    out = pack.nodes.inspect_node.LineasInspect.execute(ref).result
    assert out[0].shape[0] == 1 and out[0].shape[-1] == 3 and 0 <= float(out[0].min()) <= float(out[0].max()) <= 1
    assert "27 sites" in out[1] and "input_blocks.1.0.in_layers.0" in out[1]


def test_steering_for_another_architecture_is_a_clear_error(comfy, loaded, tmp_path):
    from lineas_engine import SiteSpec, Steering, save_steering

    model, pos, neg, ref, pack = loaded
    other = Steering({"double_blocks.0.img_norm1": SiteSpec(3072)})
    path = save_steering(comfy.base / "models" / "lineas" / "flux_style.safetensors", other,
                         fingerprint={"architecture": "Flux"})
    assert path.is_file()
    g = base_graph()
    g["load"] = {"class_type": "LineasLoad", "inputs": {"steering_name": "flux_style.safetensors"}}
    g["ap"] = apply_node(["ckpt", 0], ["load", 0])
    g["ks"] = sampler("ap", "empty")
    g["save"] = save_image(["dec", 0], "arch")
    with pytest.raises(PromptError, match="trained on a Flux model and cannot be applied to this SD15 model"):
        comfy.run(g)


@pytest.mark.parametrize("case", ["missing", "empty", "unreadable", "mixed_sizes", "bad_name"])
def test_bad_input_clear_node_errors_nothing_written(comfy, style_dirs, tmp_path, case):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    over, name = {}, f"bad_{case}"
    if case == "missing":
        target, expect = str(tmp_path / "nope"), "does not exist"
    elif case == "empty":
        target, expect = str(folder), "has no images"
    elif case == "unreadable":
        (folder / "broken.png").write_bytes(b"not a png at all")
        Image.new("RGB", (64, 64)).save(folder / "ok.png")
        target, expect = str(folder), "cannot read image"
    elif case == "mixed_sizes":
        Image.new("RGB", (64, 64)).save(folder / "a.png")
        Image.new("RGB", (80, 64)).save(folder / "b.png")
        target, expect, over = str(folder), "different sizes", {"resize": "none"}
    else:
        target, expect, name = str(style_dirs / "illustration"), "is not allowed", "../x"
    g = base_graph(seed=2)
    g["train"] = train_node(target, source=["dec", 0], steps=2, name=name, **over)
    g["show"] = {"class_type": "PreviewImage", "inputs": {"images": ["train", 1]}}
    before = sorted((comfy.output_dir / "lineas").glob("*")) if (comfy.output_dir / "lineas").exists() else []
    with pytest.raises(PromptError, match=expect):
        comfy.run(g)
    after = sorted((comfy.output_dir / "lineas").glob("*")) if (comfy.output_dir / "lineas").exists() else []
    assert after == before
    assert not (comfy.output_dir.parent / "x").exists()


def test_interrupting_training_leaves_no_file(comfy, style_dirs):
    import comfy.model_management as mm

    g = base_graph(seed=31)
    g["train"] = train_node(str(style_dirs / "illustration"), source=["dec", 0], steps=100000, name="interrupted")
    g["show"] = {"class_type": "PreviewImage", "inputs": {"images": ["train", 1]}}

    def interrupt():
        time.sleep(6)
        mm.interrupt_current_processing(True)

    t = threading.Thread(target=interrupt)
    t.start()
    start = time.time()
    try:
        with pytest.raises(PromptError):
            comfy.run(g)
    finally:
        t.join()
        mm.interrupt_current_processing(False)
    assert time.time() - start < 120
    assert any(e == "execution_interrupted" for e, _ in comfy.executor.status_messages)
    out = comfy.output_dir / "lineas"
    assert not list(out.glob("interrupted*")) and not list(out.glob(".*tmp"))
