"""Architecture matrix: every family ComfyUI detects (devtools.comfy_families: ComfyUI's own classes, random
weights, real key names, loaded by UNETLoader's function, a CONDITIONING of real shapes) through the
nodes: train (loss decreases), apply with hooks and with fold, sample 2 steps with KSampler; strength 0
bit-identical to the unsteered model; hooks and fold agree; save -> load identical; fp32 / bf16 / fp16,
fp8 weights for SDXL and Flux. The failure table of docs/families.md and the bad-input errors (each a
LineasError, nothing written) are in test_arch_errors.py."""

from __future__ import annotations

import pytest
import torch

from devtools.comfy_runtime import families_dir

pytestmark = [pytest.mark.comfy, pytest.mark.arch]

FAMILY_NAMES = ["sd15", "sdxl", "sd35", "flux_dev", "flux_schnell", "chroma", "qwen_image", "lumina2", "hidream",
                "wan21", "wan22", "hunyuan_video"]
MATRIX = [(f, d) for f in FAMILY_NAMES for d in ("fp32", "bf16", "fp16")] + [("sdxl", "fp8_e4m3fn"),
                                                                               ("flux_dev", "fp8_e4m3fn")]
PARAMS = [pytest.param(f, d, id=f"{f}-{d}") for f, d in MATRIX]
RES = 64


def _node(comfy, node_id: str, **inputs):
    from devtools.comfy_runtime import node_class

    cls = node_class(comfy.nodes, node_id, f"test-{node_id}")
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        return cls.EXECUTE_NORMALIZED(**inputs).args


def _ksample(comfy, model, cond, latent, seed=3):
    with torch.inference_mode():
        return comfy.nodes.KSampler().sample(model, seed, 2, 1.5, "euler", "simple", cond, cond,
                                             {"samples": latent}, 1.0)[0]["samples"]


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 1, 1, generator=g)
    return (0.5 * base + 0.5 * torch.rand(n, 3, RES, RES, generator=g)).permute(0, 2, 3, 1).contiguous()


def _train_inputs(model, vae, cond, name: str, **over):
    inputs = dict(model=model, vae=vae, target_folder="", source_folder="", steps=3, learning_rate=0.01,
                  optimizer="adamw", sparsity=0.0, sites="all norms", custom_regex="", noise_start=0.0,
                  noise_end=1.0, noise_levels=2, resolution=RES, resize="crop", batch_size=8, micro_batch=0, seed=0,
                  name=name, method="lineas", target_images=_images(3, 1), source_images=_images(3, 2),
                  conditioning=cond)
    inputs.update(over)
    return inputs


def _files(comfy) -> set:
    d = comfy.output_dir / "lineas"
    return set(d.glob("*.safetensors")) if d.exists() else set()


@pytest.fixture(scope="module")
def fam_dir():
    return families_dir()


@pytest.mark.parametrize("family,dtype", PARAMS)
def test_family_trains_applies_samples(comfy, fam_dir, family, dtype):
    _check_family(comfy, fam_dir, family, dtype)


REAL = ["flux_dev", "chroma", "qwen_image", "lumina2", "wan21", "wan22", "hunyuan_video"]


@pytest.mark.slow
@pytest.mark.parametrize("family", REAL)
def test_family_at_real_width(comfy, fam_dir, family):
    """The same checks with the released models' hidden width (one block per stack; minutes and GBs)."""
    _check_family(comfy, fam_dir, family, "bf16", real_width=True)


def _check_family(comfy, fam_dir, family, dtype, real_width=False):
    import comfy.model_management as mm

    from devtools.comfy_families import load_family, make_conditioning, make_vae

    lf = load_family(family, fam_dir, dtype, real_width=real_width)
    model, fam = lf.model, lf.family
    if dtype in ("bf16", "fp16"):  # compute in that dtype as on a GPU (the CPU would manual-cast to fp32)
        model = comfy.nodes.NODE_CLASS_MAPPINGS["ModelComputeDtype"]().patch(model, dtype)[0]
    cond = make_conditioning(fam)
    vae = make_vae(fam.latent_channels)
    name = f"arch_{family}_{dtype}"
    before = _files(comfy)
    ref, _curve, summary = _node(comfy, "LineasTrainStyle", **_train_inputs(model, vae, cond, name))
    assert ref.architecture == fam.config_class
    t = ref.training
    # fp16: no underflow: nearly every channel's scale moves (training in fp16 compute leaves 9 of 2432
    # channels moved and the loss flat)
    moved = sum(int(((ref.steering.weight(s) - 1).abs() > 0).sum()) for s in ref.steering.sites)
    total = sum(ref.steering.specs[s].dim for s in ref.steering.sites)
    assert moved >= 0.9 * total, f"{moved}/{total} channels moved ({t['compute_dtype']})"
    # save -> load identical
    new = sorted(_files(comfy) - before)
    assert len(new) == 1
    loaded = _node(comfy, "LineasLoad", steering_name=new[0].name)[0]
    for s in ref.steering.sites:
        assert torch.equal(loaded.steering.weight(s), ref.steering.weight(s))
        assert torch.equal(loaded.steering.bias(s), ref.steering.bias(s))
    # sampling: strength 0 is the unsteered model bit for bit; hooks and fold agree; strength 1 acts
    shape = (1, fam.latent_channels) + ((1,) if fam.video else ()) + (RES // 8, RES // 8)
    latent = torch.zeros(shape)
    plain = _ksample(comfy, model, cond, latent)
    m0 = _node(comfy, "LineasApply", model=model, steering=loaded, strength=0.0, start_percent=0.0,
             end_percent=1.0, invert=False, mode="hooks")[0]
    assert torch.equal(_ksample(comfy, m0, cond, latent), plain)
    outs = {}
    for mode in ("hooks", "fold"):
        m1 = _node(comfy, "LineasApply", model=model, steering=loaded, strength=1.0, start_percent=0.0,
                   end_percent=1.0, invert=False, mode=mode)[0]
        outs[mode] = _ksample(comfy, m1, cond, latent)
        assert torch.isfinite(outs[mode]).all()
    assert torch.equal(_ksample(comfy, model, cond, latent), plain)  # the input MODEL is untouched
    if fam.video:  # learnt from one-frame videos, it steers a multi-frame generation
        clip = torch.zeros(1, fam.latent_channels, 2, RES // 8, RES // 8)
        mh = _node(comfy, "LineasApply", model=model, steering=loaded, strength=1.0, start_percent=0.0,
                   end_percent=1.0, invert=False, mode="hooks")[0]
        steered = _ksample(comfy, mh, cond, clip)
        assert torch.isfinite(steered).all() and not torch.equal(steered, _ksample(comfy, model, cond, clip))
    change = (outs["hooks"] - plain).norm() / plain.norm()
    gap = (outs["fold"] - outs["hooks"]).norm() / plain.norm()
    assert change > 0, "the steering does not act"
    tol = {"fp32": 1e-4, "bf16": 3e-2, "fp16": 1e-2}.get(dtype, 0.1)  # relative to the unsteered output
    assert gap <= tol, f"fold vs hooks {gap:.3g} (hooks change {change:.3g})"
    mm.unload_all_models()
    assert t["eval_after"] < t["eval_before"], summary  # the loss on the whole source set drops
