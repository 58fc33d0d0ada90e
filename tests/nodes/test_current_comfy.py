"""Features of newer ComfyUI (0.33: comfy_kitchen kernels, Dynamic VRAM, quantized weights, TorchCompileModel),
one test per feature; each runs on every tree the suite is given, and where a tree lacks the feature the
test says so in its skip reason."""

from __future__ import annotations

import pytest
import torch

from tests.nodes.test_arch_errors import _load, _pack
from tests.nodes.test_arch_matrix import RES, _ksample, _node, _train_inputs

pytestmark = [pytest.mark.comfy, pytest.mark.arch]


@pytest.fixture(scope="module")
def fam_dir():
    from devtools.comfy_runtime import families_dir

    return families_dir()


def test_training_runs_with_in_training_set_and_restored(comfy, fam_dir):
    """Cause 1: RoPE / fused rms_rope run through comfy_kitchen ops with no autograd unless
    ``comfy.model_management.in_training``; Flux training stopped at the first backward."""
    import comfy.model_management as mm

    if not hasattr(mm, "in_training"):
        pytest.skip("this ComfyUI has no comfy.model_management.in_training (v0.3.x: RoPE is plain torch)")
    model, vae, cond = _load(fam_dir, "flux_dev")
    seen = []
    dm = model.get_model_object("diffusion_model")
    handle = dm.double_blocks[0].img_norm1.register_forward_hook(lambda *_: seen.append(mm.in_training))
    try:
        ref = _node(comfy, "LineasTrainStyle", **_train_inputs(model, vae, cond, "intrain_flux", steps=2))[0]
    finally:
        handle.remove()
    assert seen and all(seen)
    assert mm.in_training is False
    assert all(((ref.steering.weight(s) - 1).abs() > 0).any() for s in ref.steering.sites[:3])


def test_fold_patch_survives_comfyuis_adapter_rebuild(comfy):
    """Cause 2: Dynamic VRAM's prefetch rebuilds weight adapters as ``type(p)(p.loaded_keys, p.weights)``
    (comfy/lora.py prefetch_prepared_value); FoldPatch(scale, shift) failed there."""
    import importlib

    root = _pack("nodes._patcher").__name__.rsplit(".nodes.", 1)[0]
    FoldPatch = importlib.import_module(root + ".nodes._fold").FoldPatch
    g = torch.Generator().manual_seed(0)
    scale, shift = 1 + 0.1 * torch.randn(8, generator=g), 0.1 * torch.randn(8, generator=g)
    patch = FoldPatch.of(scale, shift)
    rebuilt = type(patch)(patch.loaded_keys, [w.clone() for w in patch.weights])
    weight = torch.randn(8, 3, generator=g)

    def apply(p):
        return p.calculate_weight(weight.clone(), "k", 0.7, 1.0, None, lambda d: d)

    assert torch.equal(apply(rebuilt), apply(patch))
    torch.testing.assert_close(apply(patch), weight + 0.7 * ((scale - 1)[:, None] * weight + shift[:, None]))
    try:
        import comfy.lora
    except ImportError:
        return
    if hasattr(comfy.lora, "prefetch_prepared_value"):  # ComfyUI's own rebuild, no device buffer
        again = comfy.lora.prefetch_prepared_value(patch, [0], None, None, False)
        assert isinstance(again, FoldPatch) and torch.equal(apply(again), apply(patch))


def _fp8_scaled_file(fam_dir, family="sd15"):
    """The family's file as an fp8-scaled checkpoint (2-D weights in float8_e4m3fn with a per-layer
    ``scale_weight`` and the ``scaled_fp8`` marker), the format of ComfyUI's *_fp8_scaled releases."""
    from safetensors.torch import load_file, save_file

    from devtools.comfy_families import FAMILIES, write_family

    src = write_family(FAMILIES[family], fam_dir)
    out = src.with_name(src.stem + "_fp8scaled.safetensors")
    if not out.is_file():
        sd = load_file(str(src))
        q = {}
        for k, v in sd.items():
            if k.endswith(".weight") and v.dim() == 2 and v.shape[0] >= 16:
                s = v.abs().max().clamp_min(1e-8) / 448.0
                q[k] = (v / s).to(torch.float8_e4m3fn)
                q[k[: -len(".weight")] + ".scale_weight"] = s.reshape(1).float()
            else:
                q[k] = v
        q["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
        save_file(q, str(out))
    return out


def test_quantized_checkpoint_trains_folds_and_samples(comfy, fam_dir):
    """Cause 3: fp8-scaled / nvfp4 / int8 weights load as ``QuantizedTensor`` (no plain storage) in newer
    trees; aliasing them failed. They are left to ComfyUI's per-forward dequantization."""
    from devtools.comfy_families import FAMILIES, load_file, make_conditioning, make_vae

    fam = FAMILIES["sd15"]  # a reduced build ComfyUI's detection matches (quantization is read at detection)
    lf = load_file(fam, _fp8_scaled_file(fam_dir), fam.config())
    model = lf.model
    compat = _pack("nodes._compat")
    dm = model.get_model_object("diffusion_model")
    quantized = [n for n, p in dm.named_parameters() if compat.is_quantized(p)]
    cond, vae = make_conditioning(fam), make_vae(fam.latent_channels)
    ref = _node(comfy, "LineasTrainStyle", **_train_inputs(model, vae, cond, "fp8scaled_sd15", steps=2))[0]
    assert ref.training["eval_after"] < ref.training["eval_before"]
    assert [n for n, p in dm.named_parameters() if compat.is_quantized(p)] == quantized  # untouched
    latent = torch.zeros(1, 4, RES // 8, RES // 8)
    plain = _ksample(comfy, model, cond, latent)
    outs = {}
    for mode in ("hooks", "fold"):
        m = _node(comfy, "LineasApply", model=model, steering=ref, strength=1.0, start_percent=0.0,
                  end_percent=1.0, invert=False, mode=mode)[0]
        outs[mode] = _ksample(comfy, m, cond, latent)
    assert not torch.equal(outs["hooks"], plain)
    assert (outs["fold"] - outs["hooks"]).norm() <= 0.05 * plain.norm()
    if not quantized:
        pytest.skip("trained, folded and sampled; this ComfyUI loads fp8-scaled weights without QuantizedTensor")


def test_dynamic_vram_model_trains_on_a_fresh_copy(comfy, fam_dir):
    """Cause 4: under Dynamic VRAM the forward reads weight views ComfyUI made (maybe under inference mode in
    an earlier sampling); training uses ``clone(force_deepcopy=True)`` as ComfyUI's trainer does. The CPU
    never builds a ModelPatcherDynamic (ComfyUI reroutes it), so the real patcher is marked dynamic here."""
    model, vae, cond = _load(fam_dir, "sd15")
    if getattr(model, "cached_patcher_init", None) is None:
        pytest.skip("this ComfyUI has no cached_patcher_init / force_deepcopy clone (no Dynamic VRAM)")
    mem = _pack("nodes._memory")
    marked = model.clone()
    marked.is_dynamic = lambda: True
    fresh = mem.training_clone(marked)
    dm, dm_fresh = model.get_model_object("diffusion_model"), fresh.get_model_object("diffusion_model")
    assert dm_fresh is not dm
    assert not any(p.is_inference() for p in dm_fresh.parameters())
    a, b = dict(dm.named_parameters()), dict(dm_fresh.named_parameters())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in list(a)[:20])
    assert _pack("nodes._compat").free_memory(fresh, torch.device("cpu")) > 0


def test_fused_qk_sites_are_said_never_dropped(comfy, fam_dir):
    """Cause 5: Lumina2 (and newer families) read q_norm / k_norm weights in a fused rms_rope kernel at
    inference, so hooks on them never fire: sampling with such a steering raises and names the sites."""
    import comfy.model_management as mm

    is_qk = _pack("nodes._families").is_qk_norm
    Unhookable = _pack("nodes._patcher").UnhookableSiteError
    model, vae, cond = _load(fam_dir, "lumina2")
    ref = _node(comfy, "LineasTrainStyle", **_train_inputs(model, vae, cond, "qk_lumina2", steps=1,
                                                             sites="all norms + QK norms"))[0]
    qk = [s for s in ref.steering.sites if is_qk(s)]
    assert qk
    m = _node(comfy, "LineasApply", model=model, steering=ref, strength=1.0, start_percent=0.0, end_percent=1.0,
              invert=False, mode="hooks")[0]
    latent = torch.zeros(1, 16, RES // 8, RES // 8)
    dm = model.get_model_object("diffusion_model")
    fired = []
    handles = [dm.get_submodule(s).register_forward_hook(lambda *_: fired.append(1)) for s in qk]
    try:
        try:
            _ksample(comfy, m, cond, latent)
            raised = None
        except Unhookable as e:
            raised = e
    finally:
        for h in handles:
            h.remove()
        mm.unload_all_models()
    if fired:  # this tree runs q_norm / k_norm as modules: the hooks steer them
        assert raised is None
    else:
        assert raised is not None and qk[0] in str(raised) and "fold" in str(raised)


def test_torch_compiled_model_is_a_clear_error(comfy, fam_dir):
    """Hooks and TorchCompileModel do not mix (compiled first, the hooks find no site; hooks first, the output
    is partly steered): a CompiledModelError that says where to put TorchCompileModel."""
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    CompiledModelError = _pack("nodes._patcher").CompiledModelError
    model, vae, cond = _load(fam_dir, "sd15")
    ref = _node(comfy, "LineasTrainStyle", **_train_inputs(model, vae, cond, "compile_sd15", steps=1))[0]
    compiled = model.clone()
    set_torch_compile_wrapper(compiled, backend="inductor")
    with pytest.raises(CompiledModelError, match="TorchCompileModel"):
        _node(comfy, "LineasApply", model=compiled, steering=ref, strength=1.0, start_percent=0.0, end_percent=1.0,
              invert=False, mode="hooks")
    with pytest.raises(CompiledModelError, match="TorchCompileModel"):
        _node(comfy, "LineasTrainStyle", **_train_inputs(compiled, vae, cond, "compile_train", steps=1))
    steered = _node(comfy, "LineasApply", model=model, steering=ref, strength=1.0, start_percent=0.0,
                    end_percent=1.0, invert=False, mode="hooks")[0]
    set_torch_compile_wrapper(steered, backend="inductor")  # compiled after LineasApply (hooks): said at sampling
    with pytest.raises(CompiledModelError, match="TorchCompileModel"):
        _ksample(comfy, steered, cond, torch.zeros(1, 4, RES // 8, RES // 8))


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_bf16_learns_as_much_as_fp32(comfy, fam_dir, family):
    """The steering's parameters and the OT loss stay fp32 while the model runs bf16: the map's deviation
    from the identity is applied in bf16 as ``h + h * (w - 1) + b`` (``w`` itself rounds to 1 in bf16 for
    small steps) and pooled means are fp32. Before, SDXL in bf16 moved its output 41 % as far as fp32."""
    import comfy.model_management as mm

    from devtools.comfy_families import load_family, make_conditioning, make_vae

    moved = {}
    for dtype in ("fp32", "bf16"):
        lf = load_family(family, fam_dir, dtype)
        model = lf.model
        if dtype == "bf16":
            model = comfy.nodes.NODE_CLASS_MAPPINGS["ModelComputeDtype"]().patch(model, dtype)[0]
        cond, vae = make_conditioning(lf.family), make_vae(lf.family.latent_channels)
        ref = _node(comfy, "LineasTrainStyle", **_train_inputs(model, vae, cond, f"prec_{family}_{dtype}", steps=5))[0]
        fp32 = load_family(family, fam_dir, "fp32").model  # both steerings judged on the same fp32 model
        latent = torch.zeros(1, lf.family.latent_channels, RES // 8, RES // 8)
        plain = _ksample(comfy, fp32, cond, latent)
        steered = _node(comfy, "LineasApply", model=fp32, steering=ref, strength=1.0, start_percent=0.0,
                        end_percent=1.0, invert=False, mode="hooks")[0]
        moved[dtype] = float((_ksample(comfy, steered, cond, latent) - plain).norm() / plain.norm())
        mm.unload_all_models()
    assert moved["fp32"] > 0
    assert moved["bf16"] >= 0.8 * moved["fp32"], moved
