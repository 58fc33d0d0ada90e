"""Bad input to `lineas-llm`, through its real entry point on the tiny real Llama ``T`` and a valid
steering ``S`` for it. Each refusal is one line
on stderr, a non-zero exit, and no output file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llm_sidecar.cli import main

REPO = Path(__file__).resolve().parents[2]
FAST = ["--steps", "3", "--lr", "0.05", "--optimizer", "adam", "--batch-size", "8", "--device", "cpu"]
GEN = ["--max-new-tokens", "3", "--device", "cpu"]


def run(capsys, *argv):
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, expect: str, *argv) -> str:
    code, _, err = run(capsys, *argv)
    assert code == 1 and err.count("\n") == 1 and expect in err, (code, err)
    assert "Traceback" not in err
    return err


def train_args(model, texts, out, *extra):
    return ["train", "--model", model, "--source", texts / "toxic.txt", "--target", texts / "clean.jsonl",
            "--out", out, *FAST, *extra]


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


# -- data loss -----------------------------------------------------------------------------------------------
def test_train_never_replaces_an_existing_file_without_force(tiny_llama_dir, texts, capsys):
    notes = texts / "notes.txt"
    notes.write_text("my notes\n")
    model_copy = texts / "model.safetensors"
    model_copy.write_bytes((Path(tiny_llama_dir) / "model.safetensors").read_bytes())
    before = model_copy.read_bytes()
    for target in (notes, model_copy):
        refused(capsys, "already exists", *train_args(tiny_llama_dir, texts, target))
    assert notes.read_text() == "my notes\n" and model_copy.read_bytes() == before
    code, out, _ = run(capsys, *train_args(tiny_llama_dir, texts, notes, "--force"))  # asked for: replaced
    assert code == 0 and "wrote" in out
    from lineas_engine import load_steering

    load_steering(notes)
    assert no_temp_files(texts)


def test_two_trains_to_one_out_the_second_is_refused(tiny_llama_dir, texts, capsys):
    out = texts / "s.safetensors"
    assert run(capsys, *train_args(tiny_llama_dir, texts, out))[0] == 0
    first = out.read_bytes()
    refused(capsys, "already exists", *train_args(tiny_llama_dir, texts, out, "--seed", "1"))
    assert out.read_bytes() == first


def test_generate_out_never_replaces_without_force(tiny_llama_dir, texts, capsys):
    out = texts / "keep.jsonl"
    out.write_text("precious\n")
    refused(capsys, "already exists", "generate", "--model", tiny_llama_dir, "--prompt", "you are", *GEN,
            "--out", out)
    assert out.read_text() == "precious\n"
    assert run(capsys, "generate", "--model", tiny_llama_dir, "--prompt", "you are", *GEN, "--out", out,
               "--force")[0] == 0
    assert json.loads(out.read_text().splitlines()[0])["prompt"] == "you are"


def test_out_is_never_a_device_fifo_folder_or_symlink(tiny_llama_dir, texts, capsys):
    from lineas_engine import LineasError
    from llm_sidecar.validate import check_out_file

    fifo = texts / "pipe"
    os.mkfifo(fifo)
    (texts / "real.txt").write_text("x")
    (texts / "link.txt").symlink_to(texts / "real.txt")
    for target, kind in ((fifo, "a FIFO"), (texts, "a folder"), (texts / "link.txt", "a symbolic link")):
        refused(capsys, kind, *train_args(tiny_llama_dir, texts, target, "--force"))
    for dev in ("/dev/null", "/dev/zero"):  # only the check runs here: it never writes
        if os.path.exists(dev):
            with pytest.raises(LineasError, match="character device"):
                check_out_file(dev, force=True)
    assert not fifo.is_file() and (texts / "link.txt").is_symlink() and (texts / "real.txt").read_text() == "x"


def test_a_name_taken_while_training_is_not_replaced_and_the_result_is_kept(tmp_path, monkeypatch):
    """Concurrent writers: the final save is exclusive; the loser's steering goes to a safe place."""
    from lineas_engine import LineasError, SiteSpec, Steering, load_steering, save_steering
    from llm_sidecar.validate import save_or_rescue

    monkeypatch.setenv("LINEAS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "s.safetensors"
    s = Steering({"a": SiteSpec(3)})
    with torch.no_grad():
        s.bias("a").fill_(0.25)
    out.write_bytes(b"the other writer's result")  # appeared after the up-front check
    with pytest.raises(LineasError, match="kept at") as e:
        save_or_rescue(lambda p: save_steering(p, s, overwrite=False), out)
    assert out.read_bytes() == b"the other writer's result"
    kept = Path(str(e.value).split("kept at ")[1].split(": move")[0])
    assert kept.parent == tmp_path / "cache" / "unsaved"
    assert load_steering(kept)[0].bias("a").tolist() == [0.25] * 3
    gone = tmp_path / "vanished" / "s.safetensors"  # its folder removed meanwhile: kept as well
    with pytest.raises(LineasError, match="kept at"):
        save_or_rescue(lambda p: save_steering(p, s, overwrite=False), gone)


def test_a_diverged_map_is_refused_not_rescued(tmp_path, monkeypatch):
    """A NaN map is nothing worth keeping: the save's error passes through and no file is written anywhere."""
    from lineas_engine import NonFiniteMapError, SiteSpec, Steering, save_or_rescue, save_steering

    monkeypatch.setenv("LINEAS_CACHE", str(tmp_path / "cache"))
    s = Steering({"a": SiteSpec(3)})
    with torch.no_grad():
        s.bias("a").fill_(float("nan"))
    with pytest.raises(NonFiniteMapError, match="NaN or infinite"):
        save_or_rescue(lambda p: save_steering(p, s, overwrite=False), tmp_path / "s.safetensors")
    assert not (tmp_path / "s.safetensors").exists() and not (tmp_path / "cache").exists()


# -- a big file as --steering --------------------------------------------------------------------------------
def test_a_model_file_as_steering_is_refused(tiny_llama_dir, capsys):
    refused(capsys, "not a LinEAS steering file", "generate", "--model", tiny_llama_dir, "--prompt", "hi", *GEN,
            "--steering", Path(tiny_llama_dir) / "model.safetensors")


# -- perplexity with no scored token -------------------------------------------------------------------------
def test_perplexity_with_no_scored_token_is_an_error_not_1(tiny_llama_dir, texts, trained, capsys):
    from lineas_engine import LineasError
    from llm_sidecar.models import load_model
    from llm_sidecar.perplexity import perplexity

    lm = load_model(tiny_llama_dir, "cpu")
    with pytest.raises(LineasError, match="no token to score"):
        perplexity(lm, ["hello", "tea", "book"], show_progress=False)
    assert perplexity(lm, ["the river was calm ."], show_progress=False) > 1.0
    one = texts / "one_token.txt"
    one.write_text("tea\nbook\nriver\n")
    refused(capsys, "has two tokens", *train_args(tiny_llama_dir, texts, texts / "c.safetensors", "--calibrate-on",
                                                  one))
    assert not (texts / "c.safetensors").exists()
    refused(capsys, "has two tokens", "eval", "--model", tiny_llama_dir, "--steering", trained, "--prompts",
            texts / "prompts.txt", "--neutral", one, "--report", texts / "rep", *GEN)
    assert not (texts / "rep").exists()


# -- strength and other numbers, validated before any work ---------------------------------------------------
@pytest.mark.parametrize("args,expect", [
    (["generate", "--prompt", "hi", "--strength", "nan"], "--strength must be a finite number"),
    (["generate", "--prompt", "hi", "--strength", "1e9"], "--strength must be a finite number in [-10.0, 10.0]"),
    (["generate", "--prompt", "hi", "--strength=-inf"], "--strength"),
    (["export", "--steering", "s", "--out", "o", "--strength", "nan"], "--strength"),
    (["eval", "--prompts", "p", "--neutral", "n", "--report", "r", "--strengths", "0,nan"], "each of --strengths"),
    (["eval", "--prompts", "p", "--neutral", "n", "--report", "r", "--strengths", ""], "--strengths is empty"),
    (["eval", "--prompts", "p", "--neutral", "n", "--report", "r", "--seeds", ""], "--seeds is empty"),
    (["eval", "--prompts", "p", "--neutral", "n", "--report", "r", "--seeds=-1"], "each of --seeds"),
    (["train", "--out", "o", "--lr", "1e36"], "--lr must be"),
    (["train", "--out", "o", "--lr", "1e39"], "--lr must be"),
    (["train", "--out", "o", "--lr", "nan"], "--lr must be"),
    (["train", "--out", "o", "--lr", "0"], "--lr must be"),
    (["train", "--out", "o", "--sparsity", "nan"], "--sparsity must be"),
    (["train", "--out", "o", "--sparsity", "-1"], "--sparsity must be"),
    (["train", "--out", "o", "--max-length", "0"], "--max-length must be"),
    (["train", "--out", "o", "--steps", "0"], "--steps must be"),
    (["train", "--out", "o", "--n", "1"], "--n must be"),
    (["train", "--out", "o", "--max-ppl-increase", "nan"], "--max-ppl-increase"),
    (["train", "--out", "o", "--max-strength", "inf"], "--max-strength must be"),
    (["train", "--out", "o", "--max-strength", "-1"], "--max-strength must be"),
    (["train", "--out", "o", "--preserve", "n", "--preserve-weight", "0"], "--preserve-weight must be"),
    (["train", "--out", "o", "--preserve", "n", "--preserve-weight", "nan"], "--preserve-weight must be"),
    (["train", "--out", "o", "--preserve", "n", "--preserve-weight", "inf"], "--preserve-weight must be"),
    (["train", "--out", "o", "--preserve", "n", "--preserve-weight", "-1"], "--preserve-weight must be"),
    (["train", "--out", "o", "--temperature", "nan"], "--temperature"),
    (["generate", "--prompt", "hi", "--top-p", "0"], "--top-p"),
    (["generate", "--prompt", "hi", "--seed=-5"], "--seed"),
    (["demo", "--steps", "0"], "--steps"),
])
def test_numeric_arguments_are_validated_up_front(args, expect, capsys, tmp_path):
    cmd, rest = args[0], args[1:]
    model = [] if cmd == "demo" else ["--model", str(tmp_path / "no-such-model")]  # never reached
    err = refused(capsys, expect, cmd, *model, *rest)
    assert "no-such-model" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_diverged_map_is_never_saved_and_an_old_one_is_refused(tiny_llama_dir, trained, texts, capsys):
    from lineas_engine import LineasError, load_steering, save_steering
    from llm_sidecar.validate import check_map

    s, meta = load_steering(trained)
    with torch.no_grad():
        s.weight(s.sites[0]).mul_(1e36)  # what --lr 1e36 --steps 1 would write
    with pytest.raises(LineasError, match="diverged"):
        check_map(s)
    big = save_steering(texts / "big.safetensors", s, fingerprint=meta.fingerprint)  # finite: the engine keeps it
    refused(capsys, "diverged", "generate", "--model", tiny_llama_dir, "--prompt", "hi", *GEN, "--steering", big)
    refused(capsys, "diverged", "export", "--model", tiny_llama_dir, "--steering", big, "--out", texts / "exp",
            "--device", "cpu")
    assert not (texts / "exp").exists()


def test_a_diverging_training_is_reported(tiny_llama_dir, texts, capsys, caplog):
    """A loss that rises (e.g. 0.197 -> 72) is said on stderr, not only in the figures of the 'wrote' line."""
    out = texts / "div.safetensors"
    args = [a for a in train_args(tiny_llama_dir, texts, out) if a not in ("--optimizer", "adam")]
    args[args.index("--lr") + 1], args[args.index("--steps") + 1] = "100", "5"
    code, stdout, err = run(capsys, *args, "--optimizer", "sgd", "--maps", "affine", "--no-preserve")
    assert code == 0 and "wrote" in stdout
    assert "the training diverged; retrain with a lower --lr" in err + caplog.text  # a logged warning


# -- the wrong model -----------------------------------------------------------------------------------------
def test_a_steering_for_2_layers_is_refused_on_3_layers_unless_transfer_is_asked(tiny_llama_dir, tiny_llama3_dir,
                                                                                  trained, capsys):
    err = refused(capsys, "another structure", "generate", "--model", tiny_llama3_dir, "--prompt", "hi", *GEN,
                  "--steering", trained)
    assert "--allow-transfer" in err
    code, out, _ = run(capsys, "generate", "--model", tiny_llama3_dir, "--prompt", "hi", *GEN, "--steering", trained,
                       "--allow-transfer")
    assert code == 0
    assert run(capsys, "generate", "--model", tiny_llama_dir, "--prompt", "hi", *GEN, "--steering", trained)[0] == 0


# -- one line, never a traceback -----------------------------------------------------------------------------
def test_a_text_file_named_gguf(texts, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LINEAS_CACHE", str(tmp_path / "cache"))
    fake = texts / "model.gguf"
    fake.write_text("not a model\n")
    refused(capsys, "not a GGUF file", "generate", "--model", fake, "--prompt", "hi", *GEN)


def test_a_csv_field_over_the_csv_limit(tiny_llama_dir, texts, capsys):
    big = texts / "big.csv"
    big.write_text("text\n\"" + "a" * 140_000 + "\"\nshort one\n")
    refused(capsys, "line", *["train", "--model", tiny_llama_dir, "--source", big, "--target", texts / "clean.jsonl",
                              "--out", texts / "o.safetensors", *FAST])


@pytest.mark.parametrize("value,kind", [("null", "null"), ('["a", "b"]', "list"), ("3", "int"), ("{}", "dict")])
def test_jsonl_values_that_are_not_strings_are_refused(tiny_llama_dir, texts, capsys, value, kind):
    """null / list / number are refused, naming the line, not trained on as 'None', "['a', 'b']", '3'."""
    f = texts / "odd.jsonl"
    f.write_text('{"text": "a fine line"}\n{"text": ' + value + "}\n")
    refused(capsys, f"line 2: field 'text' is {kind}", "train", "--model", tiny_llama_dir, "--source", f,
            "--target", texts / "clean.jsonl", "--out", texts / "o.safetensors", *FAST)
    assert not (texts / "o.safetensors").exists()


def test_export_out_on_a_file_or_a_symlink_to_a_folder(tiny_llama_dir, trained, texts, capsys):
    f = texts / "file"
    f.write_text("keep")
    (texts / "folder").mkdir()
    (texts / "link").symlink_to(texts / "folder")
    for out, expect in ((f, "is not a folder"), (texts / "link", "symbolic link")):
        refused(capsys, expect, "export", "--model", tiny_llama_dir, "--steering", trained, "--out", out,
                "--device", "cpu")
    assert f.read_text() == "keep" and not any((texts / "folder").iterdir())


def test_crafted_steering_metadata_and_empty_site_name_through_the_cli(tiny_llama_dir, texts, capsys):
    from safetensors.torch import save as st_save

    for name, meta, expect in (
        ("list", json.dumps([1, 2]), "must be a JSON object"),
        ("string", json.dumps("s"), "must be a JSON object"),
        ("empty_site", json.dumps({"format_version": 1, "sites": {"": {"dim": 32}}}), "empty"),
    ):
        p = texts / f"{name}.safetensors"
        site = "" if name == "empty_site" else "a"
        p.write_bytes(st_save({f"scale.{site}": torch.ones(32), f"shift.{site}": torch.zeros(32)},
                              metadata={"lineas": meta}))
        refused(capsys, expect, "generate", "--model", tiny_llama_dir, "--prompt", "hi", *GEN, "--steering", p)


def test_corrupt_training_text_hashes_are_refused_by_eval(tiny_llama_dir, trained, texts, capsys):
    from lineas_engine import load_steering, save_steering

    s, meta = load_steering(trained)
    bad = save_steering(texts / "bad.safetensors", s, fingerprint=meta.fingerprint,
                        extra={**meta.extra, "training_text_hashes": True})
    refused(capsys, "not a list of hashes", "eval", "--model", tiny_llama_dir, "--steering", bad, "--prompts",
            texts / "prompts.txt", "--neutral", texts / "neutral.txt", "--report", texts / "r", *GEN)


def test_eval_report_is_checked_before_any_model_or_generation(texts, capsys, tmp_path):
    (tmp_path / "a_file").write_text("x")
    refused(capsys, "is not a folder", "eval", "--model", tmp_path / "no-such-model", "--prompts",
            texts / "prompts.txt", "--neutral", texts / "neutral.txt", "--report", tmp_path / "a_file", *GEN)
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "results.json").write_text("{}")
    refused(capsys, "already holds results.json", "eval", "--model", tmp_path / "no-such-model", "--prompts",
            texts / "prompts.txt", "--neutral", texts / "neutral.txt", "--report", rep, *GEN)
    assert (rep / "results.json").read_text() == "{}"


def test_lineas_debug_shows_the_traceback(capsys, monkeypatch, tmp_path):
    from lineas_engine import LineasError

    monkeypatch.setenv("LINEAS_DEBUG", "1")
    with pytest.raises(LineasError):
        main(["generate", "--model", str(tmp_path / "m"), "--prompt", "hi", "--strength", "nan"])


_DISK_FULL = """
import resource, signal, sys, torch
from pathlib import Path
from lineas_engine import LineasError, SiteSpec, Steering, save_steering
from llm_sidecar.validate import save_or_rescue
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
s = Steering({"a": SiteSpec(512)})
try:
    save_or_rescue(lambda p: save_steering(p, s, overwrite=False), Path(sys.argv[1]))
except LineasError as e:
    print(e)
"""


def test_disk_full_at_save_is_one_line_and_leaves_no_partial_file(tmp_path):
    """A real write failure (the file-size limit: EFBIG, as a full disk gives ENOSPC) at the final save, in a
    child process: one LineasError line, no partial or temporary file, here or in the rescue places."""
    out_dir, cache, tmp = tmp_path / "out", tmp_path / "cache", tmp_path / "tmp"
    for d in (out_dir, tmp):
        d.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LINEAS_CACHE": str(cache), "TMPDIR": str(tmp)}
    res = subprocess.run([sys.executable, "-c", _DISK_FULL, str(out_dir / "s.safetensors")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    msg = res.stdout.strip()
    assert msg.count("\n") == 0 and msg.startswith(f"cannot write {str(out_dir / 's.safetensors')!r}: File too large")
    assert "keeping the trained steering elsewhere failed too" in msg
    assert list(out_dir.iterdir()) == [] and list(tmp.iterdir()) == []
    assert not [f for f in cache.rglob("*") if f.is_file()]


@pytest.mark.slow
def test_disk_full_through_the_cli(tiny_llama_dir, texts, tmp_path):
    """The same through `lineas-llm train` end to end (slow: a child process imports transformers)."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    os.makedirs(tmp_path / "tmp", exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LINEAS_CACHE": str(tmp_path / "cache"),
           "TMPDIR": str(tmp_path / "tmp")}
    p = subprocess.run([sys.executable, "-m", "llm_sidecar.cli", *map(str, train_args(tiny_llama_dir, texts,
                        out_dir / "s.safetensors"))], cwd=REPO, env=env, capture_output=True, text=True,
                       preexec_fn=limit, timeout=300)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and lines[-1].startswith("lineas-llm train: error: cannot write"), p.stderr
    assert "File too large" in lines[-1] and "Traceback" not in p.stderr
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_signals_during_training_leave_no_file(tiny_llama_dir, texts, tmp_path, capsys, sig, code, word):
    """A real signal to this process while `lineas-llm train` runs (1,000,000 steps: it is still training)."""
    import threading

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = train_args(tiny_llama_dir, texts, out_dir / "s.safetensors")
    args[args.index("--steps") + 1] = "1000000"
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), sig))
    timer.start()
    try:
        got, _, err = run(capsys, *args)
    finally:
        timer.cancel()
    assert got == code and err.count("\n") == 1 and word in err, err
    assert list(out_dir.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before  # main() restores the handler it installed


def swallow_a_signal(sig) -> None:
    """What a library with a bare ``except:`` does: the signal's handler raises in the main thread, and the exception
    is caught and dropped."""
    try:
        os.kill(os.getpid(), sig)
        time.sleep(0.5)  # the handler runs here, in the main thread
    except BaseException:  # noqa: BLE001 - what the library did
        pass


@pytest.mark.parametrize("sig,exc", [(signal.SIGTERM, "Terminated"), (signal.SIGINT, "KeyboardInterrupt")])
def test_a_signal_swallowed_by_a_library_still_stops_training_at_the_next_step(sig, exc):
    """A signal that lands while a library runs a bare ``except:`` (model loading) has its handler's exception
    swallowed there; without more, training would go on for all its steps. The signal is remembered: the next
    training step raises it again."""
    from llm_sidecar.progress import progress_bar
    from llm_sidecar.signals import Signals

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    signals = Signals()
    signals.install()
    try:
        swallow_a_signal(sig)
        with progress_bar(10, "train", check=signals.check) as on_step:
            with pytest.raises(BaseException) as got:
                on_step(1, 0.5)
        assert type(got.value).__name__ == exc
    finally:
        signals.restore()
    assert {s: signal.getsignal(s) for s in before} == before


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
@pytest.mark.parametrize("command", ["train", "calibrate", "generate", "eval", "export", "demo"])
def test_a_signal_swallowed_while_the_model_loads_stops_every_command_before_it_writes(
        command, sig, code, word, tiny_llama_dir, trained, texts, tmp_path, monkeypatch, capsys):
    """Every command, not only training: the signal arrives during loading and a library swallows it. The command
    stops right after the load, writes nothing and exits with the signal's code."""
    import llm_sidecar.demo as demo
    import llm_sidecar.models as models

    real_load = models.load_model

    def load_and_swallow(*args, **kw):
        lm = real_load(*args, **kw)
        swallow_a_signal(sig)
        return lm

    monkeypatch.setattr(models, "load_model", load_and_swallow)
    monkeypatch.setattr(demo, "load_model", load_and_swallow)
    out = tmp_path / "out"
    out.mkdir()
    argv = {"train": train_args(tiny_llama_dir, texts, out / "s.safetensors"),
            "generate": ["generate", "--model", tiny_llama_dir, "--steering", trained, "--prompts", texts / "toxic.txt",
                         *GEN, "--out", out / "g.jsonl"],
            "eval": ["eval", "--model", tiny_llama_dir, "--steering", trained, "--prompts", texts / "prompts.txt",
                     "--neutral", texts / "neutral.txt", "--strengths", "1", "--seeds", "0", *GEN,
                     "--report", out / "report"],
            "export": ["export", "--model", tiny_llama_dir, "--steering", trained, "--out", out / "exported",
                       "--device", "cpu"],
            "calibrate": ["calibrate", "--model", tiny_llama_dir, "--steering", trained, "--calibrate-on",
                          texts / "neutral.txt", "--out", out / "c.safetensors", "--device", "cpu"],
            "demo": ["demo", "--model", tiny_llama_dir, "--n", "4", "--steps", "3", "--eval-prompts", "4",
                     "--neutral", "4", "--out", out / "demo"]}[command]
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    got, _, err = run(capsys, *argv)
    assert got == code and err.count("\n") == 1 and word in err, (got, err)
    assert list(out.iterdir()) == []
    assert {s: signal.getsignal(s) for s in before} == before


@pytest.mark.parametrize("command", ["generate", "eval"])
def test_a_signal_swallowed_during_generation_stops_at_the_next_batch(command, tiny_llama_dir, trained, texts,
                                                                      tmp_path, monkeypatch, capsys):
    """The signal lands inside the first batch of generation and is swallowed there: the command stops before the
    second batch, not after generating every batch."""
    from transformers import GenerationMixin

    real_generate = GenerationMixin.generate
    calls = []

    def generate_and_swallow(self, *args, **kw):
        calls.append(1)
        swallow_a_signal(signal.SIGTERM)
        return real_generate(self, *args, **kw)

    monkeypatch.setattr(GenerationMixin, "generate", generate_and_swallow)
    out = tmp_path / "out"
    out.mkdir()
    gen = [*GEN, "--gen-batch-size", "2"]  # 10 prompts: 5 batches
    argv = {"generate": ["generate", "--model", tiny_llama_dir, "--steering", trained, "--prompts",
                         texts / "prompts.txt", *gen, "--out", out / "g.jsonl"],
            "eval": ["eval", "--model", tiny_llama_dir, "--steering", trained, "--prompts", texts / "prompts.txt",
                     "--neutral", texts / "neutral.txt", "--strengths", "1", "--seeds", "0", *gen,
                     "--report", out / "report"]}[command]
    got, _, err = run(capsys, *argv)
    assert got == 143 and "terminated" in err, (got, err)
    assert len(calls) == 1 and list(out.iterdir()) == []


def test_progress_runs_its_check_before_each_item():
    from llm_sidecar.progress import progress

    seen = []

    def check():
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        for x in progress(range(5), enabled=False, check=check):
            seen.append(x)
    assert seen == [0, 1]


# -- exported folders get the usual permissions --------------------------------------------------------------
def test_exported_folder_is_not_private(tiny_llama_dir, trained, texts, capsys):
    umask = os.umask(0o022)
    os.umask(umask)
    out = texts / "exported"
    code = run(capsys, "export", "--model", tiny_llama_dir, "--steering", trained, "--out", out, "--device", "cpu")[0]
    assert code == 0
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    assert not [p for p in texts.iterdir() if p.name.startswith(".exported")]
