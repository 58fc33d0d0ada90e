"""From the exported folder to GGUF (llama.cpp / Ollama), opt-in: llama.cpp's converter is not a PyPI
package. It ships in the sdist of llama-cpp-python (vendor/llama.cpp/convert_hf_to_gguf.py, with its own
gguf-py); point LLAMA_CPP_CONVERT at it:

    pip download llama-cpp-python==0.3.36 --no-deps --no-binary llama-cpp-python -d /tmp/sd
    tar xzf /tmp/sd/*.tar.gz -C /tmp/sd
    export LLAMA_CPP_CONVERT=/tmp/sd/llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py
    pytest -m slow tests/sidecar/test_gguf.py

The steered SmolLM2 folder (Llama architecture with MLP biases) converts to a GGUF whose tensors are the
folded weights, the shifts included as ffn_gate / ffn_up biases (which llama.cpp's llama graph reads as
optional tensors). Running it needs a llama.cpp build, which this test does not do."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow


def test_exported_model_converts_to_gguf_with_its_folded_shifts(tmp_path):
    conv = os.environ.get("LLAMA_CPP_CONVERT")
    if not conv or not os.path.isfile(conv):
        pytest.skip("set LLAMA_CPP_CONVERT to llama.cpp's convert_hf_to_gguf.py (see this file's docstring)")
    from safetensors.torch import load_file

    from lineas_engine import Steering, site_specs
    from llm_sidecar.export import export_folded
    from llm_sidecar.models import load_model
    from llm_sidecar.sites import choose_sites

    lm = load_model("smollm2", "cpu")
    s = Steering(site_specs(lm.model, choose_sites(lm.model)))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for site in s.sites:
            s.weight(site).copy_(1 + 0.1 * torch.randn(s.weight(site).shape, generator=g))
            s.bias(site).copy_(0.1 * torch.randn(s.bias(site).shape, generator=g))
    export_folded(lm, s, tmp_path / "hf")
    out = tmp_path / "steered.gguf"
    res = subprocess.run([sys.executable, conv, str(tmp_path / "hf"), "--outfile", str(out), "--outtype", "f32"],
                         capture_output=True, text=True, timeout=1800, cwd=os.path.dirname(conv))
    assert res.returncode == 0, res.stderr[-2000:]
    sys.path.insert(0, os.path.join(os.path.dirname(conv), "gguf-py"))
    from gguf import GGUFReader

    reader = GGUFReader(str(out))
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    hf = load_file(tmp_path / "hf" / "model.safetensors")
    n = lm.model.config.num_hidden_layers
    for i in range(n):
        for gg, name in (("ffn_gate.bias", "mlp.gate_proj.bias"), ("ffn_up.bias", "mlp.up_proj.bias"),
                         ("ffn_norm.weight", "post_attention_layernorm.weight")):
            want = hf[f"model.layers.{i}.{name}"].numpy()
            assert np.abs(want).max() > 0
            np.testing.assert_allclose(tensors[f"blk.{i}.{gg}"].reshape(want.shape), want, rtol=0, atol=1e-6)
