"""Models spread over devices (accelerate's dispatch): on this CPU-only machine, a tiny Llama whose blocks are
offloaded (weights on the meta device, read from disk at each forward through accelerate's hooks) trains,
generates, evaluates and exports exactly like the same model on one device. Bad device settings: one line,
exit 1, nothing written."""

import json

import pytest
import torch

from llm_sidecar.cli import main

from .test_cli import FAST, GEN, _train


def _dispatch(tmp_path):
    return ["--device-map", "auto", "--max-memory", "cpu=60KB", "--offload-folder", str(tmp_path / "offload")]


def test_offloaded_model_is_really_dispatched(tiny_llama_dir, tmp_path):
    from llm_sidecar.models import load_model

    lm = load_model(tiny_llama_dir, device_map="auto", max_memory="cpu=60KB", offload_folder=str(tmp_path / "o"))
    assert "disk" in lm.model.hf_device_map.values() and lm.device == torch.device("cpu")
    assert any(p.device.type == "meta" for p in lm.model.parameters())


def test_train_generate_eval_export_offloaded_equal_single_device(tiny_llama_dir, texts, tmp_path, capsys):
    from lineas_engine import load_steering

    one, spread = texts / "one.safetensors", texts / "spread.safetensors"
    assert _train(tiny_llama_dir, texts, one, "--maps", "affine") == 0  # shifts too
    cpu = FAST.index("--device")
    fast_no_device = FAST[:cpu] + FAST[cpu + 2:]
    assert main(["train", "--model", tiny_llama_dir, "--source", str(texts / "toxic.txt"), "--target",
                 str(texts / "clean.jsonl"), "--out", str(spread), "--maps", "affine", *fast_no_device,
                 *_dispatch(tmp_path)]) == 0
    a, b = load_steering(one)[0], load_steering(spread)[0]
    for s in a.sites:
        torch.testing.assert_close(a.weight(s), b.weight(s), atol=1e-5, rtol=0)
        torch.testing.assert_close(a.bias(s), b.bias(s), atol=1e-5, rtol=0)
    assert max(float(a.bias(s).detach().abs().max()) for s in a.sites) > 1e-3  # it did learn something

    gen = ["generate", "--model", tiny_llama_dir, "--prompts", str(texts / "prompts.txt"), "--steering", str(one),
           "--temperature", "0", "--max-new-tokens", "6"]
    capsys.readouterr()
    assert main(gen + ["--device", "cpu"]) == 0
    single = capsys.readouterr().out
    assert main(gen + _dispatch(tmp_path)) == 0
    assert capsys.readouterr().out == single

    ev = ["eval", "--model", tiny_llama_dir, "--steering", str(one), "--prompts", str(texts / "prompts.txt"),
          "--neutral", str(texts / "neutral.txt"), "--strengths", "1", "--seeds", "0", *GEN[:2]]
    assert main(ev + ["--device", "cpu", "--report", str(tmp_path / "r1")]) == 0
    assert main(ev + _dispatch(tmp_path) + ["--report", str(tmp_path / "r2")]) == 0
    r1, r2 = (json.loads((tmp_path / r / "results.json").read_text())["results"][0] for r in ("r1", "r2"))
    assert r1["perplexity"] == pytest.approx(r2["perplexity"], rel=1e-5) and r1["toxicity"] == r2["toxicity"]

    assert main(["export", "--model", tiny_llama_dir, "--steering", str(one), "--out", str(tmp_path / "e1"),
                 "--device", "cpu"]) == 0
    assert main(["export", "--model", tiny_llama_dir, "--steering", str(one), "--out", str(tmp_path / "e2"),
                 *_dispatch(tmp_path)]) == 0
    from safetensors.torch import load_file

    w1, w2 = load_file(tmp_path / "e1" / "model.safetensors"), load_file(tmp_path / "e2" / "model.safetensors")
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert json.loads((tmp_path / "e2" / "lineas_export.json").read_text())["max_abs_logit_diff_vs_hooked"] <= 1e-4


@pytest.mark.parametrize("case", ["does_not_fit", "no_such_gpu", "unknown_map", "bad_size", "quantized"])
def test_bad_device_settings_one_line_nothing_written(case, tiny_llama_dir, texts, capsys):
    import importlib.util

    args = {"does_not_fit": (["--device-map", "auto", "--max-memory", "cpu=10KB"], "does not fit"),
            "no_such_gpu": (["--device-map", "auto", "--max-memory", "7=1GiB"], "names GPU 7"),
            "unknown_map": (["--device-map", "everywhere"], "is unknown"),
            "bad_size": (["--device-map", "auto", "--max-memory", "cpu=lots"], "must look like"),
            "quantized": (["--load-in", "8bit"], "needs the bitsandbytes package")}
    extra, expect = args[case]
    if case == "quantized" and importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    out = texts / "o.safetensors"
    code = main(["train", "--model", tiny_llama_dir, "--source", str(texts / "toxic.txt"), "--target",
                 str(texts / "clean.jsonl"), "--out", str(out), "--steps", "2", *extra])
    err = capsys.readouterr().err
    assert code == 1 and expect in err and err.count("\n") == 1, err
    assert not out.exists() and sorted(p.name for p in texts.iterdir()) == sorted(
        ["toxic.txt", "clean.jsonl", "jigsaw.csv", "prompts.txt", "neutral.txt"])
