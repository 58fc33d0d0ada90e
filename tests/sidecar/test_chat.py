"""Chat formatting round trip on a tiny real Llama whose tokenizer has a chat template: train records the
formatting (and system prompt) in the steering file; generate and eval under that steering format prompts
the same way, i.e. exactly as the template renders them; training pools over the texts' own tokens."""

import json
import shutil

import pytest

from llm_sidecar.cli import main

from .test_cli import FAST

TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'system' %}this is {% endif %}{{ m['content'] }} .\n"
            "{% endfor %}{% if add_generation_prompt %}he said , {% endif %}")  # words of the tiny vocabulary


@pytest.fixture(scope="module")
def chat_dir(tiny_llama_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("tiny-chat") / "m"
    shutil.copytree(tiny_llama_dir, d)
    tok = AutoTokenizer.from_pretrained(d)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(d)
    return str(d)


def test_content_mask_covers_exactly_the_text():
    from transformers import AutoTokenizer

    from llm_sidecar.chat import CONTENT_MASK, ChatFormat, encode_texts

    from .conftest import _tokenizer

    tok = _tokenizer()
    tok.chat_template = TEMPLATE
    tok.padding_side = "left"
    texts = ["you stupid idiot", "the garden is lovely in the morning"]
    enc = encode_texts(tok, texts, ChatFormat(system="be kind"), max_length=64)
    for i, t in enumerate(texts):
        ids = enc["input_ids"][i][enc[CONTENT_MASK][i].bool()]
        assert tok.decode(ids) == t
        assert tok.decode(enc["input_ids"][i][enc["attention_mask"][i].bool()]) == f"this is be kind . {t} . he said ,"
    assert AutoTokenizer  # the fixture tokenizer is a real transformers fast tokenizer


def test_train_generate_eval_use_the_recorded_formatting(chat_dir, texts, tmp_path, capsys):
    from lineas_engine import load_steering
    from llm_sidecar.chat import ChatFormat
    from llm_sidecar.models import load_model

    out = texts / "chat.safetensors"
    assert main(["train", "--model", chat_dir, "--source", str(texts / "toxic.txt"), "--target",
                 str(texts / "clean.jsonl"), "--out", str(out), *FAST, "--system", "be kind"]) == 0
    chat = load_steering(out)[1].extra["chat"]
    assert chat["enabled"] and chat["system"] == "be kind"
    plain = texts / "plain.safetensors"
    assert main(["train", "--model", chat_dir, "--source", str(texts / "toxic.txt"), "--target",
                 str(texts / "clean.jsonl"), "--out", str(plain), *FAST, "--no-chat"]) == 0
    assert load_steering(plain)[1].extra["chat"] == {"enabled": False}
    default = texts / "default.safetensors"  # raw text unless asked, even for a model with a chat template
    assert main(["train", "--model", chat_dir, "--source", str(texts / "toxic.txt"), "--target",
                 str(texts / "clean.jsonl"), "--out", str(default), *FAST]) == 0
    assert load_steering(default)[1].extra["chat"] == {"enabled": False}

    tok = load_model(chat_dir, "cpu").tokenizer
    rendered = ChatFormat(system="be kind").format(tok, "you are a")
    assert rendered == "this is be kind .\nyou are a .\nhe said , "
    gen = ["generate", "--model", chat_dir, "--steering", str(out), "--temperature", "0", "--max-new-tokens", "8",
           "--device", "cpu"]
    capsys.readouterr()
    assert main(gen + ["--prompt", "you are a"]) == 0  # formatting from the file
    via_file = capsys.readouterr().out
    assert main(gen + ["--prompt", rendered, "--no-chat"]) == 0  # the same text, formatted by hand
    assert capsys.readouterr().out == via_file
    assert main(gen + ["--prompt", "you are a", "--no-chat"]) == 0
    assert capsys.readouterr().out != via_file  # the template does change what the model reads

    rep = tmp_path / "rep"
    assert main(["eval", "--model", chat_dir, "--steering", str(out), "--prompts", str(texts / "prompts.txt"),
                 "--neutral", str(texts / "neutral.txt"), "--strengths", "1", "--seeds", "0", "--report", str(rep),
                 "--max-new-tokens", "4", "--device", "cpu"]) == 0
    assert json.loads((rep / "results.json").read_text())["meta"]["chat"]["system"] == "be kind"


@pytest.mark.parametrize("case", ["chat_without_template", "system_without_template", "unknown_recipe"])
def test_bad_chat_and_recipe_one_line_nothing_written(case, tiny_llama_dir, texts, capsys):
    extra, expect = {"chat_without_template": (["--chat"], "has no chat template"),
                     "system_without_template": (["--system", "hi"], "has no chat template"),
                     "unknown_recipe": (["--recipe", "turbo"], "--recipe 'turbo' is unknown")}[case]
    out = texts / "o.safetensors"
    code = main(["train", "--model", tiny_llama_dir, "--source", str(texts / "toxic.txt"), "--target",
                 str(texts / "clean.jsonl"), "--out", str(out), "--device", "cpu", *extra])
    err = capsys.readouterr().err
    assert code == 1 and expect in err and err.count("\n") == 1, err
    assert not out.exists() and not [p for p in texts.iterdir() if p.name.startswith(".o.")]


def test_default_recipe_is_fast_and_paper_is_one_flag_away(tiny_llama_dir, texts):
    from lineas_engine import load_steering

    out, paper = texts / "d.safetensors", texts / "p.safetensors"
    common = ["train", "--model", tiny_llama_dir, "--source", str(texts / "toxic.txt"), "--target",
              str(texts / "clean.jsonl"), "--device", "cpu"]
    assert main(common + ["--out", str(out), "--steps", "3"]) == 0  # --steps overrides only the steps
    cfg = load_steering(out)[1].config
    assert (cfg["optimizer"], cfg["lr"], cfg["steps"], cfg["batch_size"]) == ("adam", 0.0075, 3, 32)
    assert main(common + ["--out", str(paper), "--recipe", "paper", "--steps", "3"]) == 0
    cfg = load_steering(paper)[1].config
    assert (cfg["optimizer"], cfg["lr"], cfg["steps"]) == ("sgd", 0.1, 3)
