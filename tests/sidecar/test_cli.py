"""Every lineas-llm command on a tiny real model, through the real CLI entry point."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llm_sidecar.cli import main

FAST = ["--steps", "15", "--lr", "0.05", "--optimizer", "adam", "--batch-size", "8", "--device", "cpu"]
GEN = ["--max-new-tokens", "6", "--device", "cpu"]


def _train(model_dir, texts, out, *extra):
    return main(["train", "--model", model_dir, "--source", str(texts / "toxic.txt"),
                 "--target", str(texts / "clean.jsonl"), "--out", str(out), *FAST, *extra])


def test_train_writes_a_checked_steering(tiny_llama_dir, texts, capsys):
    from lineas_engine import load_steering

    out = texts / "s.safetensors"
    assert _train(tiny_llama_dir, texts, out) == 0
    assert "wrote" in capsys.readouterr().out
    steering, meta = load_steering(out)
    assert steering.sites == ["model.layers.0.post_attention_layernorm", "model.layers.1.post_attention_layernorm"]
    assert meta.fingerprint["architecture"] == "LlamaForCausalLM"
    assert meta.training["method"] == "lineas" and meta.training["loss_last"] < meta.training["loss_first"]
    # the defaults: scale-only maps, kept fluent on the 64 embedded neutral passages (hashed with the 16 texts)
    assert meta.training["maps"] == "scale"
    assert all(float(steering.bias(s).detach().abs().max()) == 0 for s in steering.sites)
    assert meta.extra["preserve"]["texts"] == 64 and len(meta.extra["preserve_text_hashes"]) == 64
    assert len(meta.extra["training_text_hashes"]) == 16 + 64
    assert steering.support() > 0


def test_train_opt_outs_give_the_papers_maps(tiny_llama_dir, texts):
    from lineas_engine import load_steering

    out = texts / "paper.safetensors"
    assert _train(tiny_llama_dir, texts, out, "--maps", "affine", "--no-preserve") == 0
    steering, meta = load_steering(out)
    assert meta.training["maps"] == "affine"
    assert any(float(steering.bias(s).detach().abs().max()) > 0 for s in steering.sites)
    assert "preserve" not in meta.extra and len(meta.extra["training_text_hashes"]) == 16


def test_train_from_csv_columns_layerwise_and_sparse(tiny_llama_dir, texts):
    from lineas_engine import load_steering

    csv = str(texts / "jigsaw.csv")
    out = texts / "lw.safetensors"
    assert main(["train", "--model", tiny_llama_dir, "--source", csv, "--source-field", "comment_text",
                 "--source-where", "toxic=1", "--target", csv, "--target-where", "toxic=0", "--out", str(out),
                 "--method", "layerwise", "--device", "cpu"]) == 0
    assert load_steering(out)[1].training["method"] == "layer-wise"  # one spelling in files; the old is accepted
    sparse = texts / "sp.safetensors"
    assert _train(tiny_llama_dir, texts, sparse, "--sparsity", "1.0", "--sites", r".*layers\.\d+\..*norm") == 0
    s, _ = load_steering(sparse)
    assert len(s.sites) == 4 and s.support() < 0.9


def test_train_from_prompts(tiny_llama_dir, texts):
    from lineas_engine import load_steering

    out = texts / "p.safetensors"
    assert main(["train", "--model", tiny_llama_dir, "--from-prompts", str(texts / "prompts.txt"), "--n", "3",
                 "--out", str(out), *FAST, "--max-new-tokens", "4"]) == 0
    assert len(load_steering(out)[1].extra["training_text_hashes"]) >= 10


def test_generate_steered_and_strength_zero_equals_base(tiny_llama_dir, texts, capsys):
    out = texts / "s.safetensors"
    _train(tiny_llama_dir, texts, out)
    capsys.readouterr()
    args = ["generate", "--model", tiny_llama_dir, "--prompts", str(texts / "prompts.txt"), *GEN, "--seed", "3"]
    assert main(args) == 0
    base = capsys.readouterr().out
    assert main(args + ["--steering", str(out), "--strength", "0"]) == 0
    assert capsys.readouterr().out == base
    assert main(["generate", "--model", tiny_llama_dir, "--prompt", "you are a", *GEN, "--steering", str(out),
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out.strip() != ""
    jl = texts / "gen.jsonl"
    assert main(args + ["--out", str(jl)]) == 0
    rows = [json.loads(x) for x in jl.read_text().splitlines()]
    assert len(rows) == 10 and rows[0]["prompt"] == "you are a"


def test_eval_report_and_refuses_training_prompts(tiny_llama_dir, texts, capsys):
    out = texts / "s.safetensors"
    _train(tiny_llama_dir, texts, out)
    rep = texts / "report"
    assert main(["eval", "--model", tiny_llama_dir, "--steering", str(out), "--prompts", str(texts / "prompts.txt"),
                 "--neutral", str(texts / "neutral.txt"), "--strengths", "0,1", "--seeds", "0,1", "--report",
                 str(rep), *GEN]) == 0
    data = json.loads((rep / "results.json").read_text())
    assert [r["strength"] for r in data["results"]] == [0.0, 1.0]
    assert data["meta"]["steering_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()  # the file evaluated
    assert all(len(r["toxicity_per_seed"]) == 2 and r["perplexity"] > 1 for r in data["results"])
    assert (rep / "results.md").read_text().count("| s |") == 2
    assert (rep / "toxicity_vs_perplexity.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["eval", "--model", tiny_llama_dir, "--steering", str(out), "--prompts", str(texts / "toxic.txt"),
                 "--neutral", str(texts / "neutral.txt"), "--report", str(texts / "r2"), *GEN]) == 1
    assert "were used to train this steering" in capsys.readouterr().err


def test_export_matches_hooked_and_loads_with_plain_transformers(tiny_llama_dir, texts):
    """The exported folder's logits equal the hooked steering's (1e-4), shifts folded into MLP biases."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lineas_engine import load_steering, steered

    out = texts / "s.safetensors"
    _train(tiny_llama_dir, texts, out, "--maps", "affine")  # shifts too: the harder fold
    steering, _ = load_steering(out)
    assert any(bool((steering.bias(s) != 0).any()) for s in steering.sites)
    exp = texts / "exported"
    assert main(["export", "--model", tiny_llama_dir, "--steering", str(out), "--strength", "0.7", "--out", str(exp),
                 "--device", "cpu"]) == 0
    code = ("import sys, torch; from transformers import AutoModelForCausalLM as M;"
            "m = M.from_pretrained(sys.argv[1]); print(m.config.mlp_bias)")
    res = subprocess.run([sys.executable, "-c", code, str(exp)], capture_output=True, text=True, timeout=120,
                         cwd="/")  # no project code importable from there
    assert res.returncode == 0 and res.stdout.strip() == "True", res.stderr
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    folded = AutoModelForCausalLM.from_pretrained(exp).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    enc = tok(["you are a stupid idiot", "the garden is lovely"], return_tensors="pt", padding=True)
    with torch.no_grad(), steered(base, steering, 0.7):
        hooked = base(**enc).logits
    with torch.no_grad():
        diff = (folded(**enc).logits - hooked).abs().max().item()
    assert diff <= 1e-4
    assert json.loads((exp / "lineas_export.json").read_text())["max_abs_logit_diff_vs_hooked"] <= 1e-4


def test_export_refuses_unfoldable_shift_on_gemma(tiny_gemma_dir, texts, capsys):
    out = texts / "g.safetensors"
    assert _train(tiny_gemma_dir, texts, out, "--maps", "affine") == 0  # Gemma's shifts have no exact fold
    capsys.readouterr()
    exp = texts / "gexp"
    assert main(["export", "--model", tiny_gemma_dir, "--steering", str(out), "--out", str(exp),
                 "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "cannot be folded exactly" in err and err.count("\n") == 1
    assert not exp.exists() and not [p for p in texts.iterdir() if p.name.startswith(".gexp")]


def test_scale_only_training_exports_exactly_where_shifts_are_refused(tiny_gemma_dir, texts, capsys):
    from lineas_engine import load_steering

    out = texts / "gs.safetensors"
    assert _train(tiny_gemma_dir, texts, out, "--maps", "scale") == 0
    steering, meta = load_steering(out)
    assert meta.config["maps"] == "scale"
    assert all(torch.equal(steering.bias(s), torch.zeros_like(steering.bias(s))) for s in steering.sites)
    assert any(bool((steering.weight(s) != 1).any()) for s in steering.sites)
    exp = texts / "gsexp"
    assert main(["export", "--model", tiny_gemma_dir, "--steering", str(out), "--out", str(exp),
                 "--device", "cpu"]) == 0
    info = json.loads((exp / "lineas_export.json").read_text())
    assert info["max_abs_logit_diff_vs_hooked"] <= 1e-4 and info["folded_shifts"] == [] and not info["scale_only"]


@pytest.mark.parametrize("case", ["missing", "empty", "one_sample", "bad_sites", "other_model", "unwritable"])
def test_bad_input_one_clear_line_no_output(case, tiny_llama_dir, tiny_gemma_dir, texts, capsys):
    out = texts / "o.safetensors"
    src, tgt = str(texts / "toxic.txt"), str(texts / "clean.jsonl")
    extra = []
    if case == "missing":
        src, expect = str(texts / "nope.txt"), "does not exist"
    elif case == "empty":
        (texts / "empty.txt").write_text("\n\n")
        src, expect = str(texts / "empty.txt"), "has no samples"
    elif case == "one_sample":
        (texts / "one.txt").write_text("just one\n")
        src, expect = str(texts / "one.txt"), "at least 2"
    elif case == "bad_sites":
        extra, expect = ["--sites", "no_such_module.*"], "matched no module"
    elif case == "unwritable":
        out, expect = texts / "no" / "dir" / "o.safetensors", "not writable"
    if case == "other_model":
        assert _train(tiny_gemma_dir, texts, out) == 0
        capsys.readouterr()
        code = main(["generate", "--model", tiny_llama_dir, "--prompt", "hi", "--steering", str(out), *GEN])
        expect = "trained on a Gemma3ForCausalLM model"
    else:
        code = main(["train", "--model", tiny_llama_dir, "--source", src, "--target", tgt, "--out", str(out),
                     *FAST, *extra])
        assert not out.exists()
    err = capsys.readouterr().err
    assert code == 1 and expect in err and err.count("\n") == 1, err
    assert not [p for p in texts.iterdir() if p.name.startswith(".o.safetensors")]


def test_console_script_runs(tiny_llama_dir, texts):
    exe = Path(sys.executable).parent / "lineas-llm"
    if not exe.exists():
        pytest.skip("lineas-llm console script not installed in this environment (pip install -e .)")
    res = subprocess.run([str(exe), "train", "--model", tiny_llama_dir, "--source", str(texts / "missing.txt"),
                          "--target", str(texts / "clean.jsonl"), "--out", str(texts / "x.safetensors")],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "LINEAS_NO_PROGRESS": "1"})
    assert res.returncode == 1 and res.stderr.startswith("lineas-llm train: error:") and "does not exist" in res.stderr
