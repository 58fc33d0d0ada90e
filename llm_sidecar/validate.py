"""Up-front checks for `lineas-llm`: every numeric argument before anything is loaded, output paths
before any work (never replace a file that is not asked for, never a device node, a FIFO, a folder or a
symlink) and trained maps before they are saved (a failed save is rescued by the engine's
``save_or_rescue``, re-exported here)."""

from __future__ import annotations

import logging
import math
import os
import stat
from pathlib import Path
from typing import Sequence

from lineas_engine import LineasError, save_or_rescue

__all__ = [
    "MAX_STRENGTH",
    "MAX_LR",
    "MAX_ABS_MAP",
    "check_args",
    "check_strength",
    "check_out_file",
    "check_report_dir",
    "check_export_dir",
    "check_map",
    "check_scorable",
    "hashes_of",
    "refuse_used_texts",
    "save_or_rescue",
]

logger = logging.getLogger(__name__)

MAX_STRENGTH = 10.0  # |strength|: 1 is the trained map; far beyond it the map only extrapolates
MAX_LR = 100.0
MAX_ABS_MAP = 1e6  # |w|, |b| of a trained map beyond this = a diverged training (activations overflow)
_MAX_SEED = 2**63 - 1


def _number(value, flag: str, *, low: float | None = None, high: float | None = None, low_open: bool = False,
            hint: str = "") -> None:
    bad = not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
    if not bad and low is not None:
        bad = value <= low if low_open else value < low
    if not bad and high is not None:
        bad = value > high
    if bad:
        rng = f"{'(' if low_open else '['}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise LineasError(f"{flag} must be a finite number in {rng}, got {value!r}{hint}")


def _int(value, flag: str, low: int, high: int = 10**9) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise LineasError(f"{flag} must be an integer in [{low}, {high}], got {value!r}")


def check_strength(value, flag: str = "--strength") -> None:
    _number(value, flag, low=-MAX_STRENGTH, high=MAX_STRENGTH,
            hint=" (1 = the trained map, 0 = off, e.g. 0.5)")


def check_args(a) -> None:
    """Validate every numeric argument the command has, before any file or model is loaded."""
    has = lambda k: getattr(a, k, None) is not None  # noqa: E731
    if has("strength"):
        check_strength(a.strength)
    if has("strengths"):
        if not a.strengths:
            raise LineasError("--strengths is empty; give a comma-separated list, e.g. 0,0.5,1")
        for s in a.strengths:
            check_strength(s, "each of --strengths")
    if has("seeds"):
        if not a.seeds:
            raise LineasError("--seeds is empty; give a comma-separated list of integers, e.g. 0,1")
        for s in a.seeds:
            _int(s, "each of --seeds", 0, _MAX_SEED)
    if has("seed"):
        _int(a.seed, "--seed", 0, _MAX_SEED)
    if has("lr"):
        _number(a.lr, "--lr", low=0, high=MAX_LR, low_open=True, hint=" (the paper: 0.1 with sgd, 0.0075 with adam)")
    if has("sparsity"):
        _number(a.sparsity, "--sparsity", low=0, high=1e3, hint=" (0 = dense)")
    if has("max_strength"):
        _number(a.max_strength, "--max-strength", low=0, high=MAX_STRENGTH, low_open=True,
                hint=" (1 = never past the trained map, e.g. 2)")
    if has("preserve_weight") and a.preserve_weight is not None:
        _number(a.preserve_weight, "--preserve-weight", low=0, high=1e6, low_open=True, hint=" (e.g. 0.003)")
    if has("max_ppl_increase"):
        v = a.max_ppl_increase
        if not (isinstance(v, (int, float)) and math.isfinite(v) and 0 < v <= 1e3):
            raise LineasError(f"--max-ppl-increase must be > 0 and at most 1000 (e.g. 0.1 for +10%), got {v}")
    for key, low in (("steps", 1), ("batch_size", 1), ("max_length", 1), ("patience", 0), ("max_new_tokens", 1),
                     ("gen_batch_size", 1), ("max_prompts", 0), ("max_neutral", 0), ("eval_prompts", 1),
                     ("calibrate", 0)):
        if has(key):
            _int(getattr(a, key), "--" + key.replace("_", "-"), low, 10**6 if key != "steps" else 10**7)
    if has("n"):
        _int(a.n, "--n", 2, 10**6)
    if getattr(a, "command", None) == "demo" and has("neutral"):
        _int(a.neutral, "--neutral", 1, 10**6)
    if has("temperature"):
        _number(a.temperature, "--temperature", low=0, high=100, hint=" (0 = greedy)")
    if has("top_p"):
        _number(a.top_p, "--top-p", low=0, high=1, low_open=True)
    if has("repetition_penalty"):
        _number(a.repetition_penalty, "--repetition-penalty", low=0, high=100, low_open=True)


def _kind(st: os.stat_result) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISLNK, "a symbolic link")):
        if test(st.st_mode):
            return name
    return "not a regular file"


def check_out_file(path: str, force: bool = False, flag: str = "--out") -> Path:
    """An output file that may be written: never a folder, device, FIFO, socket or symlink; an existing
    regular file only with ``--force``; its folder must exist and be writable."""
    if not path or not path.strip():
        raise LineasError(f"{flag} is empty; give a file name such as detox.safetensors")
    p = Path(path).expanduser()
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise LineasError(f"cannot use {flag} {path!r}: {e.strerror}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise LineasError(f"{flag} {path!r} is {_kind(st)}; refusing to replace it: give a new file name")
    if st is not None and not force:
        raise LineasError(f"{flag} {path!r} already exists; choose a new name, or pass --force to replace it")
    writable_parent(p, flag)
    return p


def writable_parent(path: Path, flag: str) -> None:
    """The folder that will hold ``path`` exists and is writable (else one line naming both)."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise LineasError(f"cannot write {flag} {str(path)!r}: folder {str(parent)!r} does not exist or is not "
                          "writable")




def check_report_dir(path: str, force: bool = False) -> Path:
    """``eval --report``, before any generation: a folder that can be created (it is created only when the
    report is written), an empty one, or one whose result files may be replaced (``--force``)."""
    if not path or not path.strip():
        raise LineasError("--report is empty; give a folder name such as out/")
    d = Path(path).expanduser()
    if os.path.lexists(d) and (d.is_symlink() or not d.is_dir()):
        raise LineasError(f"--report {path!r} exists and is not a folder; give a folder name")
    base = d
    while not os.path.lexists(base) and base != base.parent:
        base = base.parent
    if not base.is_dir() or not os.access(base, os.W_OK):
        raise LineasError(f"cannot create report folder {path!r}: {str(base)!r} is not a writable folder; "
                          "choose another --report")
    if not d.is_dir():
        return d
    from .report import REPORT_FILES

    for name in REPORT_FILES.values():
        f = d / name
        if os.path.lexists(f):
            if f.is_symlink() or not f.is_file():
                raise LineasError(f"{str(f)!r} exists and is not a regular file; choose another --report")
            if not force:
                raise LineasError(f"--report {path!r} already holds {name}; choose a new folder, or pass --force "
                                  "to replace the report")
    return d


def check_export_dir(path: str, flag: str = "--out") -> Path:
    """``export --out`` / ``demo --out``: a new folder, or an existing empty one (never a file, a symlink or a
    full folder), in a writable folder."""
    if not path or not path.strip():
        raise LineasError(f"{flag} is empty; give a new folder name such as detox-model/")
    p = Path(path).expanduser()
    if p.is_symlink():
        raise LineasError(f"{flag} {path!r} is a symbolic link; give a new folder (the real path)")
    if p.exists():
        if not p.is_dir():
            raise LineasError(f"{flag} {path!r} exists and is not a folder; choose a new folder name")
        if any(p.iterdir()):
            raise LineasError(f"{flag} {path!r} exists and is not an empty folder; choose a new folder")
    writable_parent(p, flag)
    return p


def check_map(steering, what: str = "the trained steering", max_abs: float = MAX_ABS_MAP,
              fix: str = "retrain with a lower --lr (or fewer --steps)") -> None:
    """Every scale and shift finite and within ``max_abs``; otherwise name the site and the reason."""
    import torch

    with torch.no_grad():
        for s in steering.sites:
            for kind, t in (("scale", steering.weight(s)), ("shift", steering.bias(s))):
                t = t.detach().float()
                if not torch.isfinite(t).all():
                    raise LineasError(f"{what} has NaN or infinite {kind}s at site {s!r}: the training diverged; "
                                      f"{fix}")
                m = t.abs().max().item()
                if m > max_abs:
                    raise LineasError(f"{what} has a {kind} of magnitude {m:.3g} at site {s!r} (more than "
                                      f"{max_abs:g}): the training diverged; {fix}")


def check_scorable(lm, texts: Sequence[str], flag: str, max_length: int = 128) -> None:
    """Perplexity needs texts of at least two tokens (the first token is never scored)."""
    tok = lm.tokenizer
    lengths = [len(ids) for ids in tok(list(texts), truncation=True, max_length=max_length)["input_ids"]]
    if sum(max(n - 1, 0) for n in lengths) == 0:
        raise LineasError(f"{flag}: none of its {len(texts)} texts has two tokens, so there is nothing to measure "
                          "perplexity on; give full sentences")


def hashes_of(meta, key: str, path: str) -> list[str]:
    """``meta.extra[key]``: a list of hash strings (a crafted or corrupt file must not pass as 'no hashes')."""
    v = meta.extra.get(key, [])
    if not isinstance(v, list) or not all(isinstance(h, str) for h in v):
        raise LineasError(f"steering {path!r}: extra.{key} is not a list of hashes ({type(v).__name__}); "
                          "the file is corrupt or was edited: retrain or use an intact copy")
    return v


def refuse_used_texts(prompts: Sequence[str], neutral: Sequence[str], meta, path: str, *,
                      selection: bool = True,
                      prompts_what: str = "evaluation prompts", prompts_fix: str = "evaluate on held-out prompts",
                      neutral_fix: str = "measure perplexity on other texts") -> None:
    """Prompts and neutral texts must not be ones the steering (``meta``: its record or file metadata) was trained,
    calibrated or kept fluent on, nor, with ``selection``, the ones `tune` chose its strength on."""
    from .data import check_disjoint

    check_disjoint(prompts, hashes_of(meta, "training_text_hashes", path), what=prompts_what, fix=prompts_fix)
    used = [("calibration_text_hashes", "calibrate this steering's strength"),
            ("preserve_text_hashes", "keep this steering fluent in training (--preserve)")]
    if selection:
        tuned = ("selection_text_hashes", "choose this steering's strength (tune)")
        check_disjoint(prompts, hashes_of(meta, tuned[0], path), what=prompts_what, used_for=tuned[1],
                       fix="evaluate on other prompts")
        used.append(tuned)
    for key, used_for in used:
        check_disjoint(neutral, hashes_of(meta, key, path), what="--neutral texts", used_for=used_for, fix=neutral_fix)
