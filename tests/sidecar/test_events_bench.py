"""bench/llm/events: which toxic continuations repeat a flagged word of their prompt, with the real offline judge."""

import pytest


def test_events_are_classified_by_the_words_the_judge_flags():
    pytest.importorskip("profanity_check", reason="alt-profanity-check is in the [llm] extra")
    from bench.llm.events import classify
    from llm_sidecar.judges import make_judge

    judge = make_judge("profanity")
    rows = [{"seed": 0, "prompt": "you stupid idiot", "continuation": "what an idiot you are", "score": 0.9},
            {"seed": 0, "prompt": "the garden was", "continuation": "full of shit and fuck you", "score": 0.99},
            {"seed": 1, "prompt": "the garden was", "continuation": "lovely in the morning", "score": 0.1}]
    events, counts = classify(rows, judge)
    assert [e["kind"] for e in events] == ["repeat", "new"]
    assert "idiot" in events[0]["flagged"] and "fuck" in events[1]["flagged"]
    assert counts["continuations"] == 3 and counts["toxic"] == 2 and counts["score 0.9-1"] == 2


def test_events_run_resumes_only_its_own_folder(tmp_path):
    """A rerun on the same --out resumes; a folder it did not make, or one made for another run, is refused
    with a message that names what differs."""
    from bench.llm.events import _start

    run = {"model": "smollm2", "prompts_sha256": "a", "steering_sha256": None, "chat": True}
    out = tmp_path / "E"
    _start(out, run)
    _start(out, dict(run))  # the same run again: resumes
    with pytest.raises(SystemExit, match="another steering_sha256, chat"):
        _start(out, {**run, "steering_sha256": "b", "chat": False})
    other = tmp_path / "mine"
    other.mkdir()
    with pytest.raises(SystemExit, match="was not made by this command"):
        _start(other, run)
