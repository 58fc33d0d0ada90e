"""Utility-budget calibration: the strength search against closed-form curves, and `train
--calibrate-on` on a tiny real Llama (the saved map is exactly the trained map at the calibrated strength, and
meets the budget)."""

import math

import pytest
import torch

from llm_sidecar.calibrate import search_strength
from llm_sidecar.cli import main

from .test_cli import _train

CURVES = {  # relative perplexity rise as a function of the strength: smooth, steep, kinked, flat then steep
    "square": lambda s: 0.334 * s**2,
    "cube": lambda s: 2.0 * s**3,
    "linear": lambda s: 0.4 * s,
    "exp": lambda s: math.expm1(4 * s) / 10,
    "kink": lambda s: 0.01 * s if s < 0.6 else 0.006 + 5 * (s - 0.6),
    "sqrt": lambda s: 0.9 * math.sqrt(s),
}


@pytest.mark.parametrize("curve", sorted(CURVES))
@pytest.mark.parametrize("budget", [0.05, 0.1])
def test_strength_search_meets_the_budget_tightly_in_few_evaluations(curve, budget):
    f, calls = CURVES[curve], []

    def increase(lam):
        calls.append(lam)
        return f(lam)

    lam = search_strength(increase, budget)
    assert f(lam) <= budget  # feasible
    assert f(lam) >= 0.95 * budget or f(lam + 2**-6) > budget  # and tight: close to the budget, or to the edge
    assert len(calls) <= 12  # max_evals: the kinked curve needs them all
    if curve in ("square", "cube", "linear", "sqrt"):  # exact power laws: the fit lands at once
        assert len(calls) <= 3, calls


def _through(pts):
    """Piecewise power law through measured (strength, rise) points, the square law before the first."""
    def f(s):
        prev = (0.0, 0.0)
        for x, y in pts:
            if s <= x:
                if prev[0] == 0:
                    return y * (s / x) ** 2
                p = math.log(y / prev[1]) / math.log(x / prev[0])
                return prev[1] * (s / prev[0]) ** p
            prev = (x, y)
        p = math.log(pts[-1][1] / pts[-2][1]) / math.log(pts[-1][0] / pts[-2][0])
        return pts[-1][1] * (s / pts[-1][0]) ** p
    return f


def test_strength_search_on_the_measured_curve_needs_three_evaluations():
    """The calibration of the default run (docs/results/llm_detox_log.md): +33.4 % at 1, +8.6 % at 0.5,
    +18.4 % at 0.75, +13.0 % at 0.625: a power law through those (p about 1.9) needs strength 1 and two
    guesses, where bisection needed 7 evaluations."""
    f = _through([(0.5, 0.086), (0.625, 0.130), (0.75, 0.184), (1.0, 0.334)])  # searched in [0, 1] only
    calls = []
    lam = search_strength(lambda s: calls.append(s) or f(s), 0.1)
    assert 0.95 * 0.1 <= f(lam) <= 0.1 and len(calls) <= 4, calls


def test_strength_search_past_the_trained_map_on_the_default_runs_curve():
    """The default `train --calibrate-on` of SmolLM2 (docs/results/llm_defaults/smollm2_train.log): +3.0 % at
    the trained map, +8.3 % at 1.5776, +9.5 % at 1.6742, +9.8 % at 1.6975, +34.8 % at 2.8371, +108.7 % at 4.
    Searching up to 4 it took 6 evaluations, two of them far past the budget (4 and 2.84); extrapolating from
    the trained map it needs at most 4 and none past +20 %."""
    f = _through([(1.0, 0.030), (1.5776, 0.083), (1.6742, 0.095), (1.6975, 0.098), (2.8371, 0.348),
                  (4.0, 1.087)])
    calls = []
    lam = search_strength(lambda s: calls.append(s) or f(s), 0.1, upper=4.0)
    assert 0.95 * 0.1 <= f(lam) <= 0.1, (lam, calls)
    assert calls[0] == 1.0 and len(calls) <= 4 and max(f(s) for s in calls) < 0.2, calls


@pytest.mark.parametrize("curve", sorted(CURVES))
def test_strength_search_past_the_trained_map_on_every_curve(curve):
    """The same curves stretched so that the trained map is under the budget: the search goes past 1, stays
    feasible and tight, and closes within max_evals even on the kinked and flat-then-steep ones."""
    f, calls = (lambda s: CURVES[curve](s / 3)), []
    lam = search_strength(lambda s: calls.append(s) or f(s), 0.05, upper=4.0)
    assert f(lam) <= 0.05 and calls[0] == 1.0 and len(calls) <= 12
    assert lam == 4.0 or f(lam) >= 0.95 * 0.05 or f(lam + 2**-6) > 0.05, (lam, calls)


def test_strength_search_when_the_trained_map_costs_nothing():
    """No rise at all at the trained map (a flat start): the search tries the upper end instead of dividing by 0."""
    f = lambda s: 0.0 if s <= 1 else 0.02 * (s - 1) ** 2  # noqa: E731
    calls = []
    lam = search_strength(lambda s: calls.append(s) or f(s), 0.05, upper=4.0)
    assert f(lam) <= 0.05 and (f(lam) >= 0.95 * 0.05 or f(lam + 2**-6) > 0.05), (lam, calls)


def test_strength_search_keeps_full_strength_when_it_fits():
    assert search_strength(lambda lam: 0.01 * lam, 0.1) == 1.0


@pytest.mark.parametrize("a, expected", [(0.0125, math.sqrt(0.05 / 0.0125)), (0.002, 4.0), (0.2, math.sqrt(0.25))])
def test_strength_search_past_the_trained_map_only_when_it_fits(a, expected):
    """``upper`` > 1: a map under the budget at strength 1 (+1.25 %) is extrapolated until the +5 % budget is
    spent (the closed form sqrt(0.05 / a) = 2), capped at ``upper`` (4); one over the budget at 1 (+20 %) is
    searched in [0, 1] as before (0.5). The first evaluation is always the trained map."""
    calls = []
    lam = search_strength(lambda s: calls.append(s) or a * s**2, 0.05, upper=4.0)
    assert calls[0] == 1.0 and len(calls) <= 6, calls
    assert a * lam**2 <= 0.05
    assert lam <= expected and (lam == 4.0 or a * lam**2 >= 0.95 * 0.05 or lam >= expected - 2**-6)  # tight
    if expected == 4.0:
        assert lam == 4.0
    assert (lam > 1) == (a < 0.05) and all(s <= 1 for s in calls) == (a > 0.05)


def test_max_strength_is_checked_before_the_model_loads(tiny_llama_dir, texts, capsys):
    out = texts / "never.safetensors"
    base = ["train", "--model", "/nonexistent/model", "--source", str(texts / "toxic.txt"), "--target",
            str(texts / "clean.jsonl"), "--out", str(out), "--device", "cpu"]
    for extra, msg in [(["--calibrate-on", str(texts / "neutral.txt"), "--max-strength", "0"],
                        "--max-strength must be a finite number in (0"),
                       (["--calibrate-on", str(texts / "neutral.txt"), "--max-strength", "nan"],
                        "--max-strength must be a finite number in (0"),
                       (["--calibrate-on", str(texts / "neutral.txt"), "--max-strength", "11"],
                        "--max-strength must be a finite number in (0"),
                       (["--max-strength", "2"], "--max-strength 2 only applies to --calibrate-on")]:
        code = main(base + extra)
        err = capsys.readouterr().err
        assert code == 1 and msg in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


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


def test_train_calibrate_with_max_strength_saves_the_map_past_strength_1(tiny_llama_dir, texts):
    """--max-strength 3 with a budget the map cannot spend: the saved map is the trained map at strength 3,
    and the calibration records the bound it searched."""
    from lineas_engine import load_steering

    plain, cal = texts / "plain.safetensors", texts / "cal3.safetensors"
    assert _train(tiny_llama_dir, texts, plain, "--lr", "0.3") == 0
    assert _train(tiny_llama_dir, texts, cal, "--lr", "0.3", "--calibrate-on", str(texts / "neutral.txt"),
                  "--max-ppl-increase", "100", "--max-strength", "3") == 0
    full, _ = load_steering(plain)
    saved, meta = load_steering(cal)
    c = meta.training["calibration"]
    assert c["max_strength"] == 3 and c["strength"] == 3 and [s for s, _ in c["evaluations"]] == [1.0, 3.0]
    expected = full.at_strength(3.0)
    for site in full.sites:
        torch.testing.assert_close(saved.weight(site), expected.weight(site), rtol=0, atol=1e-6)
        torch.testing.assert_close(saved.bias(site), expected.bias(site), rtol=0, atol=1e-6)


def test_calibration_past_strength_1_spends_the_budget(tiny_llama_dir, texts):
    """A mild sharpening of the logits (x1.5 on the final norm at strength 1) is under the budget at strength 1:
    with max_strength 4 the calibrated strength is above 1, meets the budget, and is within 5 % of it or
    2**-6 below a strength that does not; with the default bound it stays at 1."""
    from lineas_engine import Steering, site_specs
    from llm_sidecar.calibrate import calibrate_strength
    from llm_sidecar.data import read_texts
    from llm_sidecar.models import load_model
    from llm_sidecar.perplexity import perplexity

    lm = load_model(tiny_llama_dir, "cpu")
    neutral = read_texts(texts / "neutral.txt")
    steering = Steering(site_specs(lm.model, ["model.norm"]))
    with torch.no_grad():
        steering.weight("model.norm").fill_(1.5)
    base = perplexity(lm, neutral, show_progress=False)
    budget = perplexity(lm, neutral, steering=steering, strength=2.5, show_progress=False) / base - 1
    assert budget > perplexity(lm, neutral, steering=steering, strength=1.0, show_progress=False) / base - 1 > 0
    assert calibrate_strength(lm, steering, neutral, max_increase=budget).strength == 1.0
    cal = calibrate_strength(lm, steering, neutral, max_increase=budget, max_strength=4.0)
    assert 1 < cal.strength <= 2.5 + 1e-9 and cal.evaluations[0][0] == 1.0 and cal.max_strength == 4.0
    assert cal.perplexity <= base * (1 + budget) * (1 + 1e-6)
    above = perplexity(lm, neutral, steering=steering, strength=cal.strength + 2**-6, show_progress=False)
    assert cal.perplexity >= base * (1 + 0.95 * budget) or above > base * (1 + budget)


def test_calibration_with_a_binding_budget(tiny_llama_dir, texts):
    """A map that sharpens the logits (x31 on the final norm) raises perplexity steeply and monotonically:
    the calibrated strength meets the budget, and is within 5 % of it or 2**-6 below a strength that does not."""
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
    cal = calibrate_strength(lm, steering, neutral, max_increase=0.5)
    assert 0 < cal.strength < 1 and 2 <= len(cal.evaluations) <= 10
    assert cal.perplexity <= cal.base_perplexity * 1.5
    above = perplexity(lm, neutral, steering=steering, strength=cal.strength + 2**-6, show_progress=False)
    assert cal.perplexity >= cal.base_perplexity * (1 + 0.95 * 0.5) or above > cal.base_perplexity * 1.5


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


def _calibrate(model_dir, steering, out, neutral, *extra):
    return main(["calibrate", "--model", model_dir, "--steering", str(steering), "--calibrate-on", str(neutral),
                 "--out", str(out), "--device", "cpu", *extra])


def test_calibrate_command_takes_a_calibrated_file_back_to_its_trained_map(tiny_llama_dir, texts, capsys):
    """`lineas-llm calibrate` on a file calibrated by `train --calibrate-on`: the new strength is relative to the
    trained map (a budget it cannot spend with --max-strength 3 gives the trained map at 3), the earlier
    calibration is kept in the record, and eval refuses the texts of both calibrations."""
    from lineas_engine import load_record, load_steering, save_record
    from llm_sidecar.calibrate import Calibration, apply_calibration
    from llm_sidecar.data import read_texts

    plain, cal, re3 = texts / "plain.safetensors", texts / "cal.safetensors", texts / "re3.safetensors"
    assert _train(tiny_llama_dir, texts, plain, "--lr", "0.3") == 0
    record = load_record(plain)  # a file calibrated to strength 0.4 on neutral.txt, as train --calibrate-on writes
    apply_calibration(record, Calibration(strength=0.4, max_increase=0.05, base_perplexity=10.0, perplexity=10.5,
                                          num_texts=5), read_texts(texts / "neutral.txt"))
    save_record(cal, record)
    other = texts / "other_neutral.txt"
    other.write_text("A quiet morning in the village.\nThe train left the station on time.\n", encoding="utf-8")
    capsys.readouterr()
    assert _calibrate(tiny_llama_dir, cal, re3, other, "--max-ppl-increase", "100", "--max-strength", "3") == 0
    said = capsys.readouterr().out
    full, _ = load_steering(plain)
    _, meta_cal = load_steering(cal)
    s0 = meta_cal.training["calibration"]["strength"]
    assert s0 == 0.4 and "strength 3.000" in said and f"it was at {s0:.3f}" in said
    saved, meta = load_steering(re3)
    assert meta.training["calibration"]["strength"] == 3 and meta.training["calibrations_before"][0]["strength"] == s0
    expected = full.at_strength(3.0)
    for site in full.sites:
        torch.testing.assert_close(saved.weight(site), expected.weight(site), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(saved.bias(site), expected.bias(site), rtol=1e-5, atol=1e-5)
    for neutral in ("neutral.txt", "other_neutral.txt"):
        code = main(["eval", "--model", tiny_llama_dir, "--steering", str(re3), "--prompts", str(texts / "prompts.txt"),
                     "--neutral", str(texts / neutral), "--strengths", "1", "--seeds", "0", "--report",
                     str(texts / "report"), "--max-new-tokens", "4", "--device", "cpu"])
        assert code == 1 and "were used to calibrate" in capsys.readouterr().err


def test_calibrate_command_refuses_to_overwrite_and_writes_nothing_on_bad_input(tiny_llama_dir, texts, capsys):
    plain, out = texts / "plain.safetensors", texts / "new.safetensors"
    assert _train(tiny_llama_dir, texts, plain) == 0
    before = plain.read_bytes()
    capsys.readouterr()
    for args, msg in [((plain, plain, texts / "neutral.txt", "--force"), "is the --steering file"),
                      ((plain, plain, texts / "neutral.txt"), "already exists"),
                      ((plain, out, texts / "missing.txt"), "missing.txt"),
                      ((plain, out, texts / "neutral.txt", "--max-ppl-increase", "0"), "--max-ppl-increase must be")]:
        code = _calibrate(tiny_llama_dir, *args)
        err = capsys.readouterr().err
        assert code == 1 and msg in err and len(err.strip().splitlines()) == 1, err
    assert plain.read_bytes() == before and not out.exists()
