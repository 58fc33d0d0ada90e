"""`lineas-llm tune` and the KL column of `eval` on a tiny real Llama: the neutral scores against the perplexity
function and torch's KL divergence, the grid written as a front and resumed, the chosen point saved as a
calibration that `calibrate` can undo and `eval` respects, and bad input refused in one line."""

import json
import math

import pytest
import torch

from llm_sidecar.cli import main

from .conftest import NEUTRAL
from .test_cli import _train

GEN = ["--max-new-tokens", "4", "--device", "cpu", "--seeds", "0"]


@pytest.fixture
def trained(tiny_llama_dir, texts):
    out = texts / "s.safetensors"
    assert _train(tiny_llama_dir, texts, out, "--maps", "affine", "--no-preserve") == 0
    return out


def test_neutral_scores_equal_perplexity_and_torchs_kl(tiny_llama_dir, trained):
    from lineas_engine import load_steering, steered
    from llm_sidecar.models import load_model
    from llm_sidecar.perplexity import encode_scored, neutral_scores, perplexity

    lm = load_model(tiny_llama_dir, device="cpu")
    steering, _ = load_steering(trained)
    scores = neutral_scores(lm, NEUTRAL, steering, [0.0, 1.0, 2.0], batch_size=2, show_progress=False)
    for s in scores:
        assert s.perplexity == pytest.approx(perplexity(lm, NEUTRAL, steering=steering, strength=s.strength,
                                                        batch_size=2, show_progress=False), rel=1e-6)
    assert scores[0].kl == 0 and 0 < scores[1].kl < scores[2].kl
    enc = encode_scored(lm.tokenizer, NEUTRAL)  # one batch: torch's KL over every predicted token
    with torch.no_grad():
        base = torch.log_softmax(lm.model(**enc).logits[:, :-1], -1)
        with steered(lm.model, steering, 1.0):
            logp = torch.log_softmax(lm.model(**enc).logits[:, :-1], -1)
    ref = torch.nn.functional.kl_div(logp, base, log_target=True, reduction="none").sum(-1)
    (one,) = neutral_scores(lm, NEUTRAL, steering, [1.0], show_progress=False)  # the same single batch
    assert one.kl == pytest.approx(float(ref[enc["attention_mask"][:, 1:].bool()].mean()), rel=1e-4)
    assert scores[1].kl == pytest.approx(one.kl, rel=1e-3)  # other batches pad differently: float noise only


def test_eval_reports_kl_next_to_perplexity(tiny_llama_dir, texts, trained, capsys):
    assert main(["eval", "--model", tiny_llama_dir, "--steering", str(trained), "--prompts", str(texts / "prompts.txt"),
                 "--neutral", str(texts / "neutral.txt"), "--strengths", "0,1", "--report", str(texts / "rep"),
                 *GEN]) == 0
    assert "KL (nats/token)" in capsys.readouterr().out
    rows = json.loads((texts / "rep" / "results.json").read_text())["results"]
    assert rows[0]["kl"] == 0 and rows[1]["kl"] > 0


def _tune(model, texts, steering, report, *extra):
    return main(["tune", "--model", model, "--steering", *map(str, steering), "--prompts", str(texts / "prompts.txt"),
                 "--neutral", str(texts / "neutral.txt"), "--report", str(report), *GEN, *extra])


def test_tune_writes_the_front_resumes_and_saves_the_chosen_point(tiny_llama_dir, texts, trained, capsys):
    from lineas_engine import load_record

    other = texts / "other.safetensors"
    assert _train(tiny_llama_dir, texts, other, "--seed", "1", "--no-preserve") == 0
    report, chosen = texts / "tune", texts / "chosen.safetensors"
    assert _tune(tiny_llama_dir, texts, [trained], report, "--strengths", "0.5") == 0  # one point, then "stopped"
    capsys.readouterr()
    assert _tune(tiny_llama_dir, texts, [trained, other], report, "--strengths", "0.5,1", "--max-ppl-increase", "1000",
                 "--out", str(chosen)) == 0
    out, err = capsys.readouterr()
    assert "resuming: 1 of 4 points already measured" in err and f"wrote {chosen}" in out
    state = json.loads((report / "tune.json").read_text())
    assert len(state["points"]) == 4 and state["baseline"]["strength"] == 0
    md = (report / "tune.md").read_text()
    assert md.count("| s.safetensors") + md.count("| other.safetensors") == 4 and "**chosen**" in md
    assert (report / "tune.png").stat().st_size > 1000
    best = min(state["points"].values(), key=lambda p: (p["toxicity"], p["mean_score"], p["perplexity"]))
    rec = load_record(chosen)
    cal = rec.training["calibration"]
    assert cal["chosen_by"] == "tune" and cal["strength"] == best["strength"]
    src = load_record(best["steering"])
    site = src.steering.sites[0]
    torch.testing.assert_close(rec.steering.weight(site), src.steering.at_strength(best["strength"]).weight(site))
    # the validation texts are now refused as evaluation texts
    assert main(["eval", "--model", tiny_llama_dir, "--steering", str(chosen), "--prompts", str(texts / "prompts.txt"),
                 "--neutral", str(texts / "neutral.txt"), "--report", str(texts / "rep2"), *GEN]) == 1
    assert "choose this steering's strength (tune)" in capsys.readouterr().err


@pytest.mark.parametrize("extra, match", [
    (["--strengths", ","], "--strengths is empty"),
    (["--strengths", "0,1"], "--strengths 0: each must be > 0"),
    (["--max-ppl-increase", "1e-6", "--strengths", "1"], "no point is within +0.0001% perplexity"),
])
def test_tune_bad_input_is_one_line_and_writes_no_steering(tiny_llama_dir, texts, trained, capsys, extra, match):
    from lineas_engine import load_record, save_record

    harsh = load_record(trained)  # scales of 30: perplexity rises (by 0.2 % on this tiny random model)
    with torch.no_grad():
        for site in harsh.steering.sites:
            harsh.steering.weight(site).fill_(30.0)
            harsh.steering.bias(site).zero_()
    save_record(texts / "harsh.safetensors", harsh)
    out = texts / "chosen.safetensors"
    assert _tune(tiny_llama_dir, texts, [texts / "harsh.safetensors"], texts / "t", *extra, "--out", str(out)) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # progress bars aside
    assert len(errors) == 1 and match in errors[0] and errors[0].startswith("lineas-llm tune: error: "), errors
    assert not out.exists()


def test_tune_refuses_a_report_of_other_data(tiny_llama_dir, texts, trained, capsys):
    report = texts / "t"
    assert _tune(tiny_llama_dir, texts, [trained], report, "--strengths", "1") == 0
    (texts / "prompts.txt").write_text("another prompt\nand one more\n")
    capsys.readouterr()
    assert _tune(tiny_llama_dir, texts, [trained], report, "--strengths", "1") == 1
    assert "holds a tune of other data" in capsys.readouterr().err
    assert math.isfinite(json.loads((report / "tune.json").read_text())["baseline"]["perplexity"])
