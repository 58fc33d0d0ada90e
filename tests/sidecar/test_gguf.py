"""From the exported folder to GGUF (llama.cpp / Ollama), opt-in: llama.cpp's converter is not a PyPI
package. It ships in the sdist of llama-cpp-python (vendor/llama.cpp/convert_hf_to_gguf.py, with its own
gguf-py); point LLAMA_CPP_CONVERT at it:

    pip download llama-cpp-python==0.3.36 --no-deps --no-binary llama-cpp-python -d /tmp/sd
    tar xzf /tmp/sd/*.tar.gz -C /tmp/sd
    export LLAMA_CPP_CONVERT=/tmp/sd/llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py
    pytest -m slow tests/sidecar/test_gguf.py

The steered SmolLM2 folder (Llama architecture with MLP biases) converts to a GGUF whose tensors are the
folded weights, the shifts included as ffn_gate / ffn_up biases (which llama.cpp's llama graph reads as
optional tensors). The second test runs that GGUF in llama.cpp itself, the `llama_cpp` runtime built from the
same sdist (a C++ build of about 10 min on 2 cores; it also needs `diskcache`):

    CMAKE_ARGS="-DGGML_OPENMP=OFF" pip install /tmp/sd/llama_cpp_python-0.3.36.tar.gz diskcache

and compares its greedy tokens and logits with the hooked model's and the exported folder's."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow


def _converter() -> str:
    conv = os.environ.get("LLAMA_CPP_CONVERT")
    if not conv or not os.path.isfile(conv):
        pytest.skip("set LLAMA_CPP_CONVERT to llama.cpp's convert_hf_to_gguf.py (see this file's docstring)")
    return conv


def _steered_gguf(tmp_path, conv: str, noise: float = 0.1, lm=None):
    """SmolLM2 with a random steering on every default site (scale 1 +- noise, shift +- noise; noise 0: the
    identity), exported as an HF folder and converted to an f32 GGUF. Returns (model, steering, GGUF path)."""
    from lineas_engine import Steering, site_specs
    from llm_sidecar.export import export_folded
    from llm_sidecar.models import load_model
    from llm_sidecar.sites import choose_sites

    lm = lm or load_model("smollm2", "cpu")
    s = Steering(site_specs(lm.model, choose_sites(lm.model)))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for site in s.sites:
            s.weight(site).copy_(1 + noise * torch.randn(s.weight(site).shape, generator=g))
            s.bias(site).copy_(noise * torch.randn(s.bias(site).shape, generator=g))
    tag = f"n{noise:g}"
    export_folded(lm, s, tmp_path / f"hf-{tag}")
    out = tmp_path / f"steered-{tag}.gguf"
    res = subprocess.run([sys.executable, conv, str(tmp_path / f"hf-{tag}"), "--outfile", str(out), "--outtype", "f32"],
                         capture_output=True, text=True, timeout=1800, cwd=os.path.dirname(conv))
    assert res.returncode == 0, res.stderr[-2000:]
    return lm, s, out


def test_exported_model_converts_to_gguf_with_its_folded_shifts(tmp_path):
    conv = _converter()
    from safetensors.torch import load_file

    lm, _, out = _steered_gguf(tmp_path, conv)
    sys.path.insert(0, os.path.join(os.path.dirname(conv), "gguf-py"))
    from gguf import GGUFReader

    reader = GGUFReader(str(out))
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    hf = load_file(tmp_path / "hf-n0.1" / "model.safetensors")
    n = lm.model.config.num_hidden_layers
    for i in range(n):
        for gg, name in (("ffn_gate.bias", "mlp.gate_proj.bias"), ("ffn_up.bias", "mlp.up_proj.bias"),
                         ("ffn_norm.weight", "post_attention_layernorm.weight")):
            want = hf[f"model.layers.{i}.{name}"].numpy()
            assert np.abs(want).max() > 0
            np.testing.assert_allclose(tensors[f"blk.{i}.{gg}"].reshape(want.shape), want, rtol=0, atol=1e-6)


def test_llama_cpp_runs_the_steered_gguf_as_the_hooked_model(tmp_path):
    """llama.cpp itself (llama-cpp-python's runtime) on the converted GGUF: greedy continuations of the same
    token ids equal the hooked model's (and the exported folder's), and its logits are as close to the
    exported folder's (run by transformers) as llama.cpp's are to the plain model's on the plain export (its
    own float error, the reference); the unsteered model's greedy tokens differ from the steered ones (so the
    comparison would catch a runtime that dropped the folded shifts)."""
    conv = _converter()
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (see the docstring)")
    from llm_sidecar.models import load_model

    lm, s, steered_gguf = _steered_gguf(tmp_path, conv)
    _, _, plain_gguf = _steered_gguf(tmp_path, conv, noise=0.0, lm=lm)
    folder = load_model(str(tmp_path / "hf-n0.1"), "cpu")  # the exported steered model, as transformers runs it
    prompts = ["The weather today is", "My favourite food is", "In the year 2050, cities will"]
    steps, differs, err = 16, 0, {}
    for name, gguf in (("steered", steered_gguf), ("plain", plain_gguf)):
        llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=256, logits_all=True, verbose=False, seed=0,
                              type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)  # f32 KV cache
        err[name] = 0.0
        for prompt in prompts:
            ids = lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            want, want_logits = _hf_greedy(folder if name == "steered" else lm, ids, None, steps)
            if name == "steered":
                assert _hf_greedy(lm, ids, s, steps)[0] == want  # the folder is the hooked model
                differs += _hf_greedy(lm, ids, None, steps)[0] != want
            llm.reset()
            got = []
            llm.eval(ids)
            for _ in range(steps):
                nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                got.append(nxt)
                llm.eval([nxt])
            assert got == want, (name, prompt, got, want)
            llm.reset()
            llm.eval(ids + want[:-1])
            cpp = torch.from_numpy(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32))
            err[name] = max(err[name], float((cpp - want_logits).abs().max() / want_logits.abs().max()))
        del llm
    assert differs >= 1, "the steering does not change greedy tokens: the comparison would not see a lost shift"
    assert err["steered"] <= 2 * err["plain"] + 1e-4, err


def _hf_greedy(lm, ids: list[int], steering, steps: int):
    """Greedy tokens of the HF model with ``steering`` hooked (None: unsteered), and the last step's logits."""
    from lineas_engine import steered

    x = torch.tensor([ids])
    with torch.no_grad(), steered(lm.model, steering):
        for _ in range(steps):
            logits = lm.model(input_ids=x, use_cache=False).logits[0, -1]
            x = torch.cat([x, logits.argmax().view(1, 1)], dim=1)
    return x[0, len(ids):].tolist(), logits
