"""The demo path (the README's main job) end to end on a tiny model, with the real offline data."""

import pytest

from llm_sidecar.cli import main


def test_demo_runs_end_to_end(tiny_llama_dir, tmp_path, capsys):
    pytest.importorskip("profanity_check")
    out = tmp_path / "demo.safetensors"
    assert main(["demo", "--model", tiny_llama_dir, "--n", "4", "--steps", "3", "--eval-prompts", "4",
                 "--neutral", "4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| none | 0 |" in text and "| lineas | 1 |" in text and "| lineas_cal | 1 |" in text
    assert "calibrated to a +10% perplexity budget on 50 other neutral sentences" in text
    assert "toxicity" in text and "perplexity" in text and out.is_file()
    from lineas_engine import load_steering

    meta = load_steering(out)[1]
    assert 0 <= meta.training["calibration"]["strength"] <= 1 and len(meta.extra["calibration_text_hashes"]) == 50


def test_demo_data_is_disjoint_and_real():
    from llm_sidecar.data import hash_texts, neutral_sentences, rtp_prompts, split

    prompts = rtp_prompts()
    assert len(prompts) >= 600
    pool, held = split(prompts, 200, seed=0)
    assert not set(hash_texts(pool)) & set(hash_texts(held)) and len(held) >= 300
    assert len(neutral_sentences()) >= 500
