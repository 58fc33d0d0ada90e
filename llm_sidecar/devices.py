"""Models larger than one device: accelerate's big-model dispatch (``device_map``), with weights that fit
nowhere offloaded to the CPU or a folder, and optional 8/4-bit loading with bitsandbytes.

The steering's hooks need nothing special: each site maps its output on the device that output lives on
(``Steering.apply_to`` moves w, b there, differentiably), so training, generation and evaluation run on a
dispatched model as on one device. Inputs go to the device of the input embeddings."""

from __future__ import annotations

import importlib.util
import logging
import re

import torch

from lineas_engine import LineasError

__all__ = ["DEVICE_MAPS", "parse_max_memory", "from_pretrained_kwargs", "check_fits", "input_device",
           "is_dispatched", "full_state_dict"]

logger = logging.getLogger(__name__)

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
_SIZE = re.compile(r"^\d+(\.\d+)?\s*([KMGT]i?B)?$", re.IGNORECASE)


def parse_max_memory(spec: str | None) -> dict | None:
    """``"0=20GiB,cpu=60GiB"`` -> ``{0: "20GiB", "cpu": "60GiB"}`` (GPU indices as ints)."""
    if not spec:
        return None
    out: dict = {}
    for part in spec.split(","):
        if "=" not in part:
            raise LineasError(f"--max-memory {spec!r}: {part!r} must look like DEVICE=SIZE, e.g. 0=20GiB,cpu=60GiB")
        dev, size = (x.strip() for x in part.split("=", 1))
        if not _SIZE.match(size):
            raise LineasError(f"--max-memory {spec!r}: size {size!r} must look like 500MB, 20GiB or a byte count")
        if dev.isdigit():
            n = torch.cuda.device_count()
            if int(dev) >= n:
                raise LineasError(f"--max-memory {spec!r} names GPU {dev} but torch sees {n} GPU(s); "
                                  "use cpu=SIZE or the GPUs you have")
            out[int(dev)] = size
        elif dev in ("cpu", "disk"):
            out[dev] = size
        else:
            raise LineasError(f"--max-memory {spec!r}: device {dev!r} must be a GPU index, cpu or disk")
    return out


def _quantization(load_in: str | None, dtype: torch.dtype):
    if load_in is None:
        return None
    if load_in not in ("8bit", "4bit"):
        raise LineasError(f"--load-in {load_in!r} must be 8bit or 4bit")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise LineasError(f"--load-in {load_in} needs the bitsandbytes package (pip install bitsandbytes; it "
                          "runs on CUDA GPUs); load in full precision without --load-in")
    from transformers import BitsAndBytesConfig

    if load_in == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype)


def from_pretrained_kwargs(device_map, max_memory: str | None, offload_folder: str | None,
                           load_in: str | None, dtype: torch.dtype) -> dict:
    """Keyword arguments of ``from_pretrained`` for a dispatched (and/or quantized) model."""
    if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        raise LineasError(f"--device-map {device_map!r} is unknown; use one of {', '.join(DEVICE_MAPS)} "
                          "(or --device for a single device)")
    if importlib.util.find_spec("accelerate") is None:
        raise LineasError("--device-map needs accelerate: pip install accelerate")
    kw: dict = {"device_map": device_map}
    mem = parse_max_memory(max_memory)
    if mem is not None:
        kw["max_memory"] = mem
    if offload_folder:
        kw["offload_folder"] = str(offload_folder)
    q = _quantization(load_in, dtype)
    if q is not None:
        kw["quantization_config"] = q
    return kw


def check_fits(model, kwargs: dict, max_memory: str | None) -> None:
    """Disk offload (weights read from disk at every forward: very slow) only when asked for with
    ``--offload-folder``; otherwise a model that does not fit in memory is an error."""
    on_disk = [n for n, d in (getattr(model, "hf_device_map", None) or {}).items() if d == "disk"]
    if on_disk and not kwargs.get("offload_folder"):
        mem = f"--max-memory {max_memory}" if max_memory else "the free memory"
        raise LineasError(f"--device-map {kwargs['device_map']}: the model does not fit in {mem} ({len(on_disk)} "
                          f"module(s) would be read from disk, e.g. {on_disk[0]!r}); give more --max-memory, or "
                          "--offload-folder DIR to allow disk offload (slow)")


def is_dispatched(model) -> bool:
    return bool(getattr(model, "hf_device_map", None))


def _as_device(d) -> torch.device:
    if isinstance(d, int):
        return torch.device("cuda", d)
    if d in ("disk", "meta"):  # offloaded weights are brought to the CPU to run
        return torch.device("cpu")
    return torch.device(d)


def input_device(model) -> torch.device:
    """Where input ids go: the device of the input embeddings in ``hf_device_map``."""
    dm = getattr(model, "hf_device_map", None) or {}
    emb = next((n for n, m in model.named_modules() if m is model.get_input_embeddings()), None)
    if emb is not None:
        for name, d in sorted(dm.items(), key=lambda kv: -len(kv[0])):
            if name == "" or emb == name or emb.startswith(name + "."):
                return _as_device(d)
    p = next(model.parameters())
    return p.device if p.device.type != "meta" else torch.device("cpu")


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """All weights on the CPU, also those offloaded to the CPU / disk by accelerate."""
    if is_dispatched(model) and any(p.device.type == "meta" for p in model.parameters()):
        from accelerate.utils.modeling import get_state_dict_offloaded_model

        return {k: v.detach().cpu() for k, v in get_state_dict_offloaded_model(model).items()}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
