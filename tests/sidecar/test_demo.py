"""The demo path (the README's main job) end to end on a tiny model, with the real offline data."""

import pytest

from llm_sidecar.cli import main


def test_demo_runs_end_to_end(tiny_llama_dir, tmp_path, capsys):
    pytest.importorskip("profanity_check")
    folder = tmp_path / "demo"
    assert main(["demo", "--model", tiny_llama_dir, "--n", "4", "--steps", "3", "--eval-prompts", "4",
                 "--neutral", "4", "--out", str(folder)]) == 0
    text = capsys.readouterr().out
    assert "KL to the unsteered model" in text and "KL (nats/token)" in text
    assert "| none | 0 |" in text and "| lineas | 1 |" in text and "| lineas_cal | 1 |" in text
    assert "calibrated to a +10% perplexity budget on 50 other neutral sentences" in text
    out = folder / "detox.safetensors"
    assert "toxicity" in text and "perplexity" in text and out.is_file()
    # it says where everything is and what to run next, and what it names is there
    assert f"wrote {folder}/" in text and f"lineas-llm generate --model {tiny_llama_dir} --steering {out}" in text
    assert (folder / "report" / "results.md").is_file() and (folder / "model" / "config.json").is_file()
    from transformers import AutoModelForCausalLM

    # scale maps fold into the norm weights: the exported folder keeps the model's own structure (no new biases)
    assert not AutoModelForCausalLM.from_pretrained(folder / "model").config.mlp_bias
    from lineas_engine import load_steering

    meta = load_steering(out)[1]
    assert meta.training["maps"] == "scale" and meta.extra["preserve"]["texts"] == 64
    assert 0 <= meta.training["calibration"]["strength"] <= 4 and len(meta.extra["calibration_text_hashes"]) == 50


def test_demo_data_is_disjoint_and_real():
    from llm_sidecar.data import hash_texts, neutral_sentences, rtp_prompts, split

    prompts = rtp_prompts()
    assert len(prompts) >= 600
    pool, held = split(prompts, 200, seed=0)
    assert not set(hash_texts(pool)) & set(hash_texts(held)) and len(held) >= 300
    assert len(neutral_sentences()) >= 500


def test_demo_default_folder_is_new_in_the_current_directory(tmp_path, monkeypatch):
    from lineas_engine import LineasError
    from llm_sidecar.demo import demo_folder

    monkeypatch.chdir(tmp_path)
    assert str(demo_folder(None)) == "lineas-demo"
    (tmp_path / "lineas-demo").mkdir()
    assert str(demo_folder(None)) == "lineas-demo-1"
    (tmp_path / "lineas-demo" / "x").write_text("kept")
    with pytest.raises(LineasError, match="not an empty folder"):
        demo_folder("lineas-demo")
