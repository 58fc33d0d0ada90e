"""Options shared by several `lineas-llm` commands (model loading, chat formatting, generation) and the small
steps every command takes with them: load the model, set its chat formatting, load a steering."""

from __future__ import annotations

import argparse

from lineas_engine import LineasError, get_method, load_steering

__all__ = ["floats", "ints", "model_args", "chat_args", "gen_args", "TRANSFER_HELP", "gen_config", "method_name",
           "load", "set_chat", "check_map", "load_steering_for", "file_sha256"]

TRANSFER_HELP = ("apply a steering made for a model of another structure (e.g. the base of this fine-tune); "
                 "sites and widths must still fit")


def floats(s: str) -> list[float]:
    try:
        return [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of numbers, e.g. 0,0.5,1") from None


def ints(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of integers, e.g. 0,1,2") from None


def model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="hub id, local HF folder, .gguf file, or embedded: smollm2, gemma3-270m")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16")
    _device_map_args(p)


def chat_args(p: argparse.ArgumentParser, *, training: bool = False) -> None:
    if training:
        how = ("--chat: train on the texts as the user turn of the chat template; default (--no-chat): raw text, "
               "what continuation pipelines feed the model; a steering trained on raw text also detoxes chat turns "
               "(measured in docs/results/README.md); --system implies --chat")
    else:
        how = ("format prompts with the tokenizer's chat template (default: as the steering was trained; without a "
               "steering: on when the tokenizer has one); --no-chat: raw text")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None, help=how)
    p.add_argument("--system", default=None, help="system prompt for chat formatting (default: the template's own)")


def _device_map_args(p: argparse.ArgumentParser) -> None:
    from .devices import DEVICE_MAPS

    p.add_argument("--device-map", default=None, metavar="MAP",
                   help=f"spread the model over devices with accelerate ({', '.join(DEVICE_MAPS)}); "
                        "replaces --device")
    p.add_argument("--max-memory", default=None, metavar="SPEC",
                   help="with --device-map: memory per device, e.g. 0=20GiB,1=20GiB,cpu=60GiB")
    p.add_argument("--offload-folder", default=None, metavar="DIR",
                   help="with --device-map: folder for weights that fit nowhere (disk offload)")
    p.add_argument("--load-in", choices=["8bit", "4bit"], default=None,
                   help="quantized loading with bitsandbytes (CUDA); training and export need full weights")


def gen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.3)
    p.add_argument("--repetition-penalty", type=float, default=1.2)
    p.add_argument("--gen-batch-size", type=int, default=32)


def gen_config(a):
    from .generate import GenConfig

    try:
        return GenConfig(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p,
                         repetition_penalty=a.repetition_penalty, batch_size=a.gen_batch_size)
    except ValueError as e:
        raise LineasError(str(e)) from None


def method_name(value: str) -> str:
    """--method: a registered method, by its name or an older spelling (``layerwise``)."""
    try:
        return get_method(value).name
    except LineasError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def load(a):
    """The model for ``--model`` on ``--device`` or spread by ``--device-map`` (see devices.py)."""
    from .models import load_model

    dm = getattr(a, "device_map", None)
    if dm is None and (a.max_memory or a.offload_folder):
        raise LineasError("--max-memory / --offload-folder need --device-map (e.g. --device-map auto)")
    if dm is None and a.load_in is None:
        lm = load_model(a.model, a.device, a.dtype)
    else:
        lm = load_model(a.model, a.device, a.dtype, device_map=dm or "auto", max_memory=a.max_memory,
                        offload_folder=a.offload_folder, load_in=a.load_in)
    a.check_signals()  # a library's bare ``except:`` can swallow a SIGTERM while the model loads
    return lm


def set_chat(lm, a, meta=None) -> None:
    """``lm.chat`` from --chat/--system, or as recorded in the steering file (generate / eval / tune)."""
    from .chat import chat_from_meta, resolve_chat

    if meta is None:
        lm.chat = resolve_chat(lm.tokenizer, a.chat, a.system, model=a.model)
    else:
        lm.chat = chat_from_meta(lm.tokenizer, meta.extra, a.chat, a.system, model=a.model)


def check_map(steering, path: str) -> None:
    from .validate import check_map as check

    check(steering, what=f"steering {path!r}", fix="it comes from a diverged training: retrain with a lower --lr")


def load_steering_for(lm, path: str, allow_transfer: bool = False):
    steering, meta = load_steering(path, model=lm.model, architecture=lm.architecture, allow_transfer=allow_transfer)
    check_map(steering, path)
    return steering.to(lm.device), meta


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes (what `sha256sum` prints): ties a report to the exact steering file."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
