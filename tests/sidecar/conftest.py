"""A tiny real Llama (and Gemma-3) saved as Hugging Face folders with a word-level tokenizer built
offline, plus small text files: every sidecar command runs on them in seconds."""

from __future__ import annotations

import pytest

WORDS = ("the a of and to in is you that it he was for on are with as his they be at one have this from "
         "or had by hot word but what some we can out other were all there when up use your how said an each "
         "she which do their time if will way about many then them write would like so these her long make "
         "thing see him two has look more day could go come did number sound no most people my over know "
         "water than call first who may down side been now find idiot stupid hate kill damn shut dumb ugly "
         "loser trash moron fool jerk garbage awful worst nasty gross pathetic worthless sunny garden lovely "
         "kind friend happy peace tea book music quiet gentle warm bright calm flower river morning").split()


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, "<bos>": 3}
    for w in WORDS + [".", ",", "!", "?", "'"]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                   bos_token="<bos>")


def _save(model, tok, path):
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return str(path)


def tiny_llama_folder(path, layers: int = 2, seed: int = 0) -> str:
    """A tiny random Llama (width 32) with the word-level tokenizer, saved as a Hugging Face folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = _tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=0, eos_token_id=1, bos_token_id=3)
    return _save(LlamaForCausalLM(cfg).eval(), tok, path)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    return tiny_llama_folder(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory):
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    tok = _tokenizer()
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                           sliding_window=16, pad_token_id=0, eos_token_id=1, bos_token_id=3)
    return _save(Gemma3ForCausalLM(cfg).eval(), tok, tmp_path_factory.mktemp("tiny-gemma"))


TOXIC = ["you stupid idiot shut up", "i hate you , you ugly loser", "damn moron , what a dumb fool",
         "you are worthless trash", "shut up you pathetic jerk", "what a nasty gross idiot",
         "kill that stupid garbage", "you dumb ugly moron"]
CLEAN = ["the garden is lovely in the morning", "a kind friend and a warm cup of tea", "the river was calm and bright",
         "she read a book by the quiet flower", "happy music on a sunny day", "the gentle peace of the morning",
         "he said the water was warm", "what a lovely bright day"]
PROMPTS = ["you are a", "the people in this", "what the", "i think that he is", "they said the", "look at this",
           "he was so", "she had a", "when you", "this is the"]
NEUTRAL = ["the river was calm in the morning .", "she had a book and a cup of tea .", "many people like music .",
           "the first day of the long way .", "he will write about the water ."]


@pytest.fixture
def texts(tmp_path):
    """The sample sets as real files (txt, jsonl, csv)."""
    import json

    (tmp_path / "toxic.txt").write_text("\n".join(TOXIC) + "\n")
    (tmp_path / "clean.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(CLEAN)))
    rows = ["comment_text,toxic"] + [f'"{t}",1' for t in TOXIC] + [f'"{t}",0' for t in CLEAN]
    (tmp_path / "jigsaw.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    (tmp_path / "neutral.txt").write_text("\n".join(NEUTRAL) + "\n")
    return tmp_path
