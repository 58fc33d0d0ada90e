"""The family failure table of docs/families.md and the bad-input node errors: each case either trains or
stops with a clear LineasError, and nothing is written."""

from __future__ import annotations

import pytest
import torch

from tests.nodes.test_arch_matrix import _files, _node, _train_inputs

pytestmark = [pytest.mark.comfy, pytest.mark.arch]


def _pack(module: str):
    """A module of the node pack as ComfyUI imported it (its errors are that copy's classes); not the stand-in
    package tests/engine/test_sites_pooling.py imports nodes/_families.py under."""
    import sys

    hits = [m for n, m in list(sys.modules.items()) if n.endswith(f".{module}") and "lineas" in n
            and not n.startswith(("lineas_engine", "tests", "bench", "devtools", "lineas_probe_pack"))]
    assert hits, f"pack module {module} not loaded"
    return hits[0]


@pytest.fixture(scope="module")
def fam_dir():
    from devtools.comfy_runtime import families_dir

    return families_dir()


def _load(fam_dir, family, dtype="fp32"):
    from devtools.comfy_families import load_family, make_conditioning, make_vae

    lf = load_family(family, fam_dir, dtype)
    return lf.model, make_vae(lf.family.latent_channels), make_conditioning(lf.family)


def test_no_conditioning_is_a_clear_error_and_writes_nothing(comfy, fam_dir):
    """SDXL without a CONDITIONING (the model itself would fail with 'must specify y ...'): the node asks for
    one. ComfyUI refuses such a prompt already (the input is required); this is the node's own check, for
    Python callers."""
    LineasError = _pack("lineas_engine").LineasError
    model, vae, _ = _load(fam_dir, "sdxl")
    before = _files(comfy)
    with pytest.raises(LineasError, match="connect a CONDITIONING"):
        _node(comfy, "LineasTrainStyle", **_train_inputs(model, vae, None, "err_nocond"))
    assert _files(comfy) == before


def test_other_family_conditioning_is_a_clear_error_and_writes_nothing(comfy, fam_dir):
    """SD1.5's CONDITIONING (77 x 768, pooled 768) on Flux."""
    from devtools.comfy_families import make_conditioning
    mismatch = _pack("nodes._conditioning").ConditioningMismatchError
    model, vae, _ = _load(fam_dir, "flux_dev")
    before = _files(comfy)
    with pytest.raises(mismatch, match="does not fit this Flux model"):
        _node(comfy, "LineasTrainStyle", **_train_inputs(model, vae, make_conditioning("sd15"), "err_cond"))
    assert _files(comfy) == before


def test_mixed_image_sizes_for_a_video_model_is_a_clear_error(comfy, fam_dir, tmp_path):
    from PIL import Image

    LineasError = _pack("lineas_engine").LineasError
    model, vae, cond = _load(fam_dir, "wan21")
    for i, size in enumerate([(64, 64), (64, 48)]):
        Image.new("RGB", size, (40 * i, 90, 200)).save(tmp_path / f"{i}.png")
    before = _files(comfy)
    with pytest.raises(LineasError, match="different sizes"):
        _node(comfy, "LineasTrainStyle", **_train_inputs(model, vae, cond, "err_sizes", target_folder=str(tmp_path),
                                                         target_images=None, resize="none"))
    assert _files(comfy) == before


def test_steering_from_another_family_is_refused(comfy, fam_dir):
    eng = _pack("lineas_engine")
    model, _, _ = _load(fam_dir, "sd15")
    ref = eng.SteeringRecord(eng.Steering({"double_blocks.0.img_norm1": eng.SiteSpec(256)}),
                             fingerprint={"architecture": "Flux"}, name="flux_style")
    with pytest.raises(eng.IncompatibleSteeringError, match="trained on a Flux model"):
        _node(comfy, "LineasApply", model=model, steering=ref, strength=1.0, start_percent=0.0, end_percent=1.0,
              invert=False, mode="hooks")


@pytest.mark.parametrize("family", ["flux_dev", "sd35"])
def test_qk_norms_are_out_of_the_default_preset_and_train_when_asked(comfy, fam_dir, family):
    """Table rows Flux / SD3: 'cannot read the output width of [...query_norm...]' and 'Inference tensors
    cannot be saved for backward'. QK norms (``.scale``, per head dimension) are probed on the last axis."""
    is_qk_norm = _pack("nodes._families").is_qk_norm
    model, vae, cond = _load(fam_dir, family)
    inputs = _train_inputs(model, vae, cond, f"qk_{family}", sites="all norms + QK norms")
    ref = _node(comfy, "LineasTrainStyle", **inputs)[0]
    qk = [s for s in ref.steering.sites if is_qk_norm(s)]
    assert qk and all(ref.steering.specs[s].channel_axis == -1 for s in qk)
    head_dim = {"flux_dev": 128, "sd35": 64}[family]
    assert {ref.steering.specs[s].dim for s in qk} == {head_dim}
    assert all(((ref.steering.weight(s) - 1).abs() > 0).any() for s in qk)
    default = _node(comfy, "LineasTrainStyle", **_train_inputs(model, vae, cond, f"noqk_{family}", steps=1))[0]
    assert not [s for s in default.steering.sites if is_qk_norm(s)]


@pytest.mark.parametrize("family", ["flux_dev", "chroma"])
def test_norms_that_are_not_sites_survive_the_in_place_residual_updates(comfy, fam_dir, family):
    """Sites chosen so a norm between them is not one (a custom regex; also what happens when the preset
    drops a site that sees only the conditioning, as txt_norm2 does on a Flux whose text stream does not yet
    read the image): without a copy of its input, the block changes that saved input in place
    (``txt += ...``) before backward, "modified by an inplace operation"."""
    model, vae, cond = _load(fam_dir, family)
    regex = r"double_blocks\.0\.img_norm1|single_blocks\.0\.pre_norm"
    ref = _node(comfy, "LineasTrainStyle", **_train_inputs(model, vae, cond, f"gap_{family}", sites="custom regex",
                                                             custom_regex=regex))[0]
    assert sorted(ref.steering.sites) == ["double_blocks.0.img_norm1", "single_blocks.0.pre_norm"]
    assert ((ref.steering.weight("double_blocks.0.img_norm1") - 1).abs() > 0).any()


def test_video_vae_encodes_each_image_as_its_own_one_frame_video(comfy):
    """Wan 2.1's VAE (ComfyUI's class, built from its keys) encodes [N, H, W, C] as ONE N-frame video;
    the training encodes per image: N latents of one frame each."""
    import comfy.sd
    from comfy.ldm.wan.vae import WanVAE

    from devtools.comfy_families import load_family
    from devtools.comfy_runtime import families_dir

    encode_images = _pack("nodes._conditioning").encode_images
    torch.manual_seed(0)
    full = WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                  temperal_downsample=[False, True, True], dropout=0.0).state_dict()
    vae = comfy.sd.VAE(sd={k: torch.randn(v.shape) * 0.02 for k, v in full.items()})
    assert vae.latent_dim == 3  # the video VAE path
    images = torch.rand(3, 32, 32, 3)
    with torch.inference_mode():
        whole = vae.encode(images)
    assert whole.shape[0] == 1  # ComfyUI: one video
    model = load_family("wan21", families_dir()).model
    lat = encode_images(vae, images, model)
    assert lat.shape[:3] == (3, 16, 1)


def test_training_runs_under_the_input_models_wrappers(comfy, fam_dir):
    """The training forward is sampling's: a model-function wrapper on the input MODEL (as ComfyUI nodes
    add them) wraps every training forward, and the conds reach the model as sampling builds them."""
    model, vae, cond = _load(fam_dir, "sd35")
    seen = []

    def wrapper(apply_model, args):
        seen.append(sorted(args["c"]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    wrapped = model.clone()
    wrapped.set_model_unet_function_wrapper(wrapper)
    _node(comfy, "LineasTrainStyle", **_train_inputs(wrapped, vae, cond, "wrapped", steps=1))
    assert len(seen) >= 3  # probe, targets, the step, the evaluation
    assert all("y" in c and "c_crossattn" in c for c in seen)  # SD3's pooled y, built by extra_conds
