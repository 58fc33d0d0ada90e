"""Utility-budget calibration: the bisection against its closed form, and `train --calibrate-on` on a tiny
real Llama (the saved map is exactly the trained map at the calibrated strength, and meets the budget)."""

import pytest
import torch

from llm_sidecar.calibrate import bisect_strength
from llm_sidecar.cli import main

from .test_cli import _train


@pytest.mark.parametrize("threshold", [0.0, 0.013, 0.37, 0.999])
def test_bisection_finds_the_largest_feasible_strength(threshold):
    calls = []

    def ok(lam):
        calls.append(lam)
        return lam <= threshold

    lam = bisect_strength(ok, iterations=7)
    assert lam <= threshold < lam + 2**-7
    assert len(calls) == 8  # strength 1, then one call per halving


def test_bisection_keeps_full_strength_when_it_fits():
    assert bisect_strength(lambda lam: True) == 1.0


def test_train_calibrate_on_saves_the_map_at_the_calibrated_strength(tiny_llama_dir, texts, capsys):
    from lineas_engine import load_steering
    from llm_sidecar.data import read_texts
    from llm_sidecar.models import load_model
    from llm_sidecar.perplexity import perplexity

    plain, cal = texts / "plain.safetensors", texts / "cal.safetensors"
    assert _train(tiny_llama_dir, texts, plain, "--lr", "0.3") == 0
    assert _train(tiny_llama_dir, texts, cal, "--lr", "0.3", "--calibrate-on", str(texts / "neutral.txt"),
                  "--max-ppl-increase", "0.002") == 0
    assert "calibrated to strength" in capsys.readouterr().out
    full, _ = load_steering(plain)
    saved, meta = load_steering(cal)
    c = meta.training["calibration"]
    assert c["max_increase"] == 0.002 and c["num_texts"] == 5 and len(c["evaluations"]) >= 1
    lam = c["strength"]
    expected = full.at_strength(lam)
    for site in full.sites:  # training is deterministic: the file holds T_lambda of the uncalibrated map
        torch.testing.assert_close(saved.weight(site), expected.weight(site), rtol=0, atol=1e-7)
        torch.testing.assert_close(saved.bias(site), expected.bias(site), rtol=0, atol=1e-7)
    lm = load_model(tiny_llama_dir, "cpu")
    neutral = read_texts(texts / "neutral.txt")
    base = perplexity(lm, neutral, show_progress=False)
    at_one = perplexity(lm, neutral, steering=saved, strength=1.0, show_progress=False)
    assert at_one <= base * 1.002 * (1 + 1e-6)
    assert at_one == pytest.approx(c["perplexity"], rel=1e-5)


def test_calibration_with_a_binding_budget(tiny_llama_dir, texts):
    """A map that sharpens the logits (x31 on the final norm) raises perplexity steeply and monotonically:
    the calibrated strength meets the budget, and the strength one bisection step above it does not."""
    from lineas_engine import Steering, site_specs
    from llm_sidecar.calibrate import calibrate_strength
    from llm_sidecar.data import read_texts
    from llm_sidecar.models import load_model
    from llm_sidecar.perplexity import perplexity

    lm = load_model(tiny_llama_dir, "cpu")
    neutral = read_texts(texts / "neutral.txt")
    steering = Steering(site_specs(lm.model, ["model.norm"]))
    with torch.no_grad():
        steering.weight("model.norm").fill_(31.0)
    cal = calibrate_strength(lm, steering, neutral, max_increase=0.5, iterations=6)
    assert 0 < cal.strength < 1 and len(cal.evaluations) == 7
    assert cal.perplexity <= cal.base_perplexity * 1.5
    above = perplexity(lm, neutral, steering=steering, strength=cal.strength + 2**-6, show_progress=False)
    assert above > cal.base_perplexity * 1.5


def test_calibrate_bad_budget_is_one_line_and_writes_nothing(tiny_llama_dir, texts, capsys):
    out = texts / "never.safetensors"
    code = main(["train", "--model", tiny_llama_dir, "--source", str(texts / "toxic.txt"), "--target",
                 str(texts / "clean.jsonl"), "--out", str(out), "--calibrate-on", str(texts / "neutral.txt"),
                 "--max-ppl-increase", "0", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "--max-ppl-increase must be > 0" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_eval_refuses_neutral_texts_used_for_calibration(tiny_llama_dir, texts, capsys):
    cal = texts / "cal.safetensors"
    assert _train(tiny_llama_dir, texts, cal, "--calibrate-on", str(texts / "neutral.txt")) == 0
    capsys.readouterr()
    report = texts / "report"
    code = main(["eval", "--model", tiny_llama_dir, "--steering", str(cal), "--prompts", str(texts / "prompts.txt"),
                 "--neutral", str(texts / "neutral.txt"), "--strengths", "1", "--seeds", "0", "--report",
                 str(report), "--max-new-tokens", "4", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "5 of the 5 --neutral texts were used to calibrate" in err
    assert len(err.strip().splitlines()) == 1 and not report.exists()
